#include "duquant/calibration.hpp"

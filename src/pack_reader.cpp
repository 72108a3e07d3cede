#include "duquant/pack_reader.hpp"
namespace duquant {}

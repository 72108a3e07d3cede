// `duquant verify`: (being written)
#pragma once

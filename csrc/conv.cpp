#include "conv.h"

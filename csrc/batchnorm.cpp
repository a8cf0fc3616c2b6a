#include "batchnorm.h"

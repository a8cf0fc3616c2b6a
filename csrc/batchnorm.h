#pragma once
#include "params.h"

#ifndef PULSEBRIDGE_CGPIOD_SHIM_H
#define PULSEBRIDGE_CGPIOD_SHIM_H

// libgpiod 1.6 (Debian 12): the chip/line API with gpiod_line_request_*.
#include <gpiod.h>

#endif

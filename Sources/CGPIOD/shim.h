#ifndef PULSEBRIDGE_CGPIOD_SHIM_H
#define PULSEBRIDGE_CGPIOD_SHIM_H

// libgpiod, 1.x or 2.x: its headers and library for CGPIOLines, which is the only user
// (Sources/CGPIOLines/gpio_lines.c picks the API).
#include <gpiod.h>

#endif

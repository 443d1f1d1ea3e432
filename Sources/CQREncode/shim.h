#ifndef PULSEBRIDGE_CQRENCODE_SHIM_H
#define PULSEBRIDGE_CQRENCODE_SHIM_H

// libqrencode (Debian's libqrencode-dev): QR symbols for machine payment codes.
#include <qrencode.h>

#endif

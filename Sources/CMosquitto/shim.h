#ifndef PULSEBRIDGE_CMOSQUITTO_SHIM_H
#define PULSEBRIDGE_CMOSQUITTO_SHIM_H

// mosquitto.h does not include mqtt_protocol.h, which holds the MQTT 5 property
// identifiers and reason codes; the wrapper needs both.
#include <mosquitto.h>
#include <mqtt_protocol.h>

#endif

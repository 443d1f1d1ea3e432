#ifndef PULSEBRIDGE_GPIO_LINES_H
#define PULSEBRIDGE_GPIO_LINES_H

// One GPIO line held by PulseBridge, over libgpiod 1.x (Debian 12, Raspberry Pi OS bookworm)
// or 2.x (Debian 13, Raspberry Pi OS trixie): gpio_lines.c picks the API its <gpiod.h> has,
// at build time. The same calls, the same behaviour, the same errno on failure.

#ifdef __cplusplus
extern "C" {
#endif

typedef struct pb_gpio_line pb_gpio_line;

/// Where a request failed.
typedef enum {
    PB_GPIO_OK = 0,
    /// The chip could not be opened (errno: ENOENT for no such chip, EACCES, …).
    PB_GPIO_CHIP = 1,
    /// The line could not be requested (errno: EINVAL for no such offset, EBUSY if taken, …).
    PB_GPIO_LINE = 2,
} pb_gpio_stage;

/// Requests line `offset` of `chip` (a name like gpiochip0, a path, a number or a label) for
/// `consumer`: an output whose initial logical value is 0 (inactive), or an input. With
/// `active_low`, the kernel inverts it (logical 1 drives the pin low). NULL on failure, with
/// errno set and `*stage` saying what failed.
pb_gpio_line *pb_gpio_request(const char *chip, unsigned int offset, int active_low, int output,
                              const char *consumer, pb_gpio_stage *stage);
/// Sets an output's logical value (0 or 1). 0, or -1 with errno.
int pb_gpio_set(pb_gpio_line *line, int value);
/// An input's logical value: 0 or 1, or -1 with errno.
int pb_gpio_get(pb_gpio_line *line);
/// Releases the line (and what was opened for it).
void pb_gpio_release(pb_gpio_line *line);
/// "1" or "2": the libgpiod generation this was built against.
const char *pb_gpio_api_generation(void);

#ifdef __cplusplus
}
#endif

#endif

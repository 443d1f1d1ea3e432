// PulseBridge's GPIO lines over libgpiod 1.x or 2.x (see include/gpio_lines.h).
#include "gpio_lines.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <gpiod.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// libgpiod 1.x defines GPIOD_LINE_BULK_MAX_LINES (the line-bulk API); 2.x has no line bulks.
#if defined(GPIOD_LINE_BULK_MAX_LINES)
#define PB_GPIOD_V1 1
#else
#define PB_GPIOD_V2 1
#endif

#if PB_GPIOD_V1

struct pb_gpio_line {
    struct gpiod_chip *chip;
    struct gpiod_line *line;
};

pb_gpio_line *pb_gpio_request(const char *chip_name, unsigned int offset, int active_low, int output,
                              const char *consumer, pb_gpio_stage *stage) {
    *stage = PB_GPIO_CHIP;
    // Accepts a name (gpiochip0), a path (/dev/gpiochip0), a label or a number.
    struct gpiod_chip *chip = gpiod_chip_open_lookup(chip_name);
    if (!chip) return NULL;
    *stage = PB_GPIO_LINE;
    struct gpiod_line *line = gpiod_chip_get_line(chip, offset);
    if (!line) {
        int saved = errno;
        gpiod_chip_close(chip);
        errno = saved;
        return NULL;
    }
    int flags = active_low ? GPIOD_LINE_REQUEST_FLAG_ACTIVE_LOW : 0;
    // The request sets the initial value: the line is never active for an instant.
    int rc = output ? gpiod_line_request_output_flags(line, consumer, flags, 0)
                    : gpiod_line_request_input_flags(line, consumer, flags);
    if (rc != 0) {
        int saved = errno;
        gpiod_chip_close(chip);
        errno = saved;
        return NULL;
    }
    pb_gpio_line *held = calloc(1, sizeof *held);
    if (!held) {
        gpiod_line_release(line);
        gpiod_chip_close(chip);
        errno = ENOMEM;
        return NULL;
    }
    held->chip = chip;
    held->line = line;
    *stage = PB_GPIO_OK;
    return held;
}

int pb_gpio_set(pb_gpio_line *held, int value) { return gpiod_line_set_value(held->line, value ? 1 : 0); }

int pb_gpio_get(pb_gpio_line *held) { return gpiod_line_get_value(held->line); }

void pb_gpio_release(pb_gpio_line *held) {
    if (!held) return;
    gpiod_line_release(held->line);
    gpiod_chip_close(held->chip);
    free(held);
}

const char *pb_gpio_api_generation(void) { return "1"; }

#else  // libgpiod 2.x

struct pb_gpio_line {
    struct gpiod_line_request *request;
    unsigned int offset;
};

static int all_digits(const char *s) {
    if (!*s) return 0;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s)) return 0;
    return 1;
}

/// 2.x opens chips by path only; 1.x's lookup also took a name, a number or a label.
static struct gpiod_chip *open_lookup(const char *name) {
    char path[PATH_MAX];
    if (name[0] == '/') return gpiod_chip_open(name);
    if (all_digits(name)) {
        snprintf(path, sizeof path, "/dev/gpiochip%s", name);
        return gpiod_chip_open(path);
    }
    if (strncmp(name, "gpiochip", 8) == 0 && all_digits(name + 8)) {
        snprintf(path, sizeof path, "/dev/%s", name);
        return gpiod_chip_open(path);
    }
    // A label: the chip whose info says so.
    DIR *dev = opendir("/dev");
    if (!dev) return NULL;
    struct dirent *entry;
    while ((entry = readdir(dev))) {
        if (strncmp(entry->d_name, "gpiochip", 8) != 0) continue;
        snprintf(path, sizeof path, "/dev/%s", entry->d_name);
        struct gpiod_chip *chip = gpiod_chip_open(path);
        if (!chip) continue;
        struct gpiod_chip_info *info = gpiod_chip_get_info(chip);
        int match = info && strcmp(gpiod_chip_info_get_label(info), name) == 0;
        if (info) gpiod_chip_info_free(info);
        if (match) {
            closedir(dev);
            return chip;
        }
        gpiod_chip_close(chip);
    }
    closedir(dev);
    errno = ENOENT;
    return NULL;
}

pb_gpio_line *pb_gpio_request(const char *chip_name, unsigned int offset, int active_low, int output,
                              const char *consumer, pb_gpio_stage *stage) {
    *stage = PB_GPIO_CHIP;
    struct gpiod_chip *chip = open_lookup(chip_name);
    if (!chip) return NULL;
    *stage = PB_GPIO_LINE;
    struct gpiod_line_settings *settings = gpiod_line_settings_new();
    struct gpiod_line_config *config = gpiod_line_config_new();
    struct gpiod_request_config *request_config = gpiod_request_config_new();
    struct gpiod_line_request *request = NULL;
    int saved = ENOMEM;
    if (settings && config && request_config) {
        gpiod_line_settings_set_direction(settings, output ? GPIOD_LINE_DIRECTION_OUTPUT : GPIOD_LINE_DIRECTION_INPUT);
        gpiod_line_settings_set_active_low(settings, active_low ? true : false);
        // The request sets the initial value: the line is never active for an instant.
        if (output) gpiod_line_settings_set_output_value(settings, GPIOD_LINE_VALUE_INACTIVE);
        gpiod_request_config_set_consumer(request_config, consumer);
        if (gpiod_line_config_add_line_settings(config, &offset, 1, settings) == 0) {
            request = gpiod_chip_request_lines(chip, request_config, config);
        }
        saved = errno;
    }
    if (request_config) gpiod_request_config_free(request_config);
    if (config) gpiod_line_config_free(config);
    if (settings) gpiod_line_settings_free(settings);
    // The request keeps its own descriptor; the chip is not needed any more.
    gpiod_chip_close(chip);
    if (!request) {
        errno = saved;
        return NULL;
    }
    pb_gpio_line *held = calloc(1, sizeof *held);
    if (!held) {
        gpiod_line_request_release(request);
        errno = ENOMEM;
        return NULL;
    }
    held->request = request;
    held->offset = offset;
    *stage = PB_GPIO_OK;
    return held;
}

int pb_gpio_set(pb_gpio_line *held, int value) {
    return gpiod_line_request_set_value(held->request, held->offset,
                                        value ? GPIOD_LINE_VALUE_ACTIVE : GPIOD_LINE_VALUE_INACTIVE);
}

int pb_gpio_get(pb_gpio_line *held) {
    enum gpiod_line_value value = gpiod_line_request_get_value(held->request, held->offset);
    if (value == GPIOD_LINE_VALUE_ERROR) return -1;
    return value == GPIOD_LINE_VALUE_ACTIVE ? 1 : 0;
}

void pb_gpio_release(pb_gpio_line *held) {
    if (!held) return;
    gpiod_line_request_release(held->request);
    free(held);
}

const char *pb_gpio_api_generation(void) { return "2"; }

#endif

// What scripts/gpiod2-check.sh runs against libgpiod 1.x and 2.x: gpio_lines.c must give the
// same answers from both. This machine has no GPIO chip, so these are the failures a unit
// sees when its bundle names a chip or line it does not have.
//   check EXPECTED_GENERATION    prints one line per case; exit 1 on a wrong answer
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "gpio_lines.h"

static int failures = 0;

static void expect_missing_chip(const char *chip, int output) {
    pb_gpio_stage stage = PB_GPIO_OK;
    errno = 0;
    pb_gpio_line *line = pb_gpio_request(chip, 17, 0, output, "pulsebridge-check", &stage);
    int saved = errno;
    printf("%s %-16s -> %s, stage %d, %s\n", output ? "output" : "input ", chip, line ? "a line" : "NULL", (int)stage,
           strerror(saved));
    if (line || stage != PB_GPIO_CHIP || saved != ENOENT) failures++;
    if (line) pb_gpio_release(line);
}

int main(int argc, char **argv) {
    const char *expected = argc > 1 ? argv[1] : "";
    printf("libgpiod generation %s\n", pb_gpio_api_generation());
    if (strcmp(pb_gpio_api_generation(), expected) != 0) failures++;
    expect_missing_chip("gpiochip0", 1);
    expect_missing_chip("gpiochip7", 0);
    expect_missing_chip("/dev/gpiochip3", 1);
    expect_missing_chip("4", 1);
    expect_missing_chip("pinctrl-bcm2835", 1);  // a label no chip has
    pb_gpio_release(NULL);  // releasing nothing is nothing
    if (failures) fprintf(stderr, "check: %d wrong answer(s)\n", failures);
    return failures ? 1 : 0;
}

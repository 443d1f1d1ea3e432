#!/usr/bin/env bash
# The agent's GPIO layer against libgpiod 2.x, on a machine that has 1.x (Debian 12).
# Debian 13 and Raspberry Pi OS trixie ship libgpiod 2.2.1; so does the `gpiod` 2.3.0 source
# package on PyPI, which carries libgpiod's C sources. This script builds that libgpiod
# (static, with a pkg-config file), then:
#   1. compiles Sources/CGPIOLines and the RelayOutput module (the Swift driver on top) against
#      it: `swift build --target RelayOutput` with PKG_CONFIG_PATH pointing at it;
#   2. builds Tests/gpio-lines/check.c with gpio_lines.c against 1.x and against 2.x and runs
#      both: the generation each reports, and the same errors (no such chip by name, number,
#      path or label) from both. This machine has no GPIO chip, so what needs one (driving a
#      line) is what the two generations cannot be compared on here.
#   scripts/gpiod2-check.sh [WORK_DIR]      (default /tmp/pulsebridge-gpiod2)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${1:-/tmp/pulsebridge-gpiod2}
version=2.3.0
mkdir -p "$work"
if [ ! -e "$work/prefix/lib/libgpiod.a" ]; then
  echo "== libgpiod 2 from the gpiod $version sources (PyPI)"
  rm -rf "$work/src" && mkdir -p "$work/src"
  (cd "$work/src" && python3 -m pip download --quiet --no-deps --no-binary :all: "gpiod==$version" -d . \
    && tar xzf "gpiod-$version.tar.gz")
  src=$work/src/gpiod-$version
  lib_version=$(cat "$src/libgpiod-version.txt")
  mkdir -p "$work/prefix/include" "$work/prefix/lib/pkgconfig" "$work/obj"
  for c in "$src"/lib/*.c; do
    cc -c -O2 -fPIC -D_GNU_SOURCE -DGPIOD_VERSION_STR="\"$lib_version\"" -I"$src/include" -I"$src/lib" \
      "$c" -o "$work/obj/$(basename "$c" .c).o"
  done
  ar rcs "$work/prefix/lib/libgpiod.a" "$work"/obj/*.o
  cp "$src/include/gpiod.h" "$work/prefix/include/"
  cat > "$work/prefix/lib/pkgconfig/libgpiod.pc" <<EOF
prefix=$work/prefix
Name: libgpiod
Description: libgpiod $lib_version built from the gpiod $version sources
Version: $lib_version
Cflags: -I\${prefix}/include
Libs: -L\${prefix}/lib -lgpiod
EOF
fi
echo "== libgpiod $(pkg-config --modversion "$work/prefix/lib/pkgconfig/libgpiod.pc"): the Swift driver compiles against it"
PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig" swift build --target RelayOutput --scratch-path "$work/build" 2>&1 | tail -n 3
# The compiler really saw 2.x's header: the object calls 2.x's request API, not 1.x's lines.
object=$(find "$work/build" -path '*CGPIOLines.build/gpio_lines.c.o' | head -n 1)
nm -u "$object" | grep -q 'gpiod_line_request_set_value' && ! nm -u "$object" | grep -q 'gpiod_line_set_value' \
  || { echo "gpiod2-check: $object was not built against libgpiod 2 (its symbols: $(nm -u "$object" | grep gpiod | tr -s ' \n' ' '))" >&2; exit 1; }

echo "== the C layer against 1.x and 2.x: the same answers"
cc -Wall -Wextra -Werror -ISources/CGPIOLines/include Tests/gpio-lines/check.c Sources/CGPIOLines/gpio_lines.c \
  $(pkg-config --cflags --libs libgpiod) -o "$work/check-v1"
cc -Wall -Wextra -Werror -ISources/CGPIOLines/include -I"$work/prefix/include" Tests/gpio-lines/check.c \
  Sources/CGPIOLines/gpio_lines.c "$work/prefix/lib/libgpiod.a" -o "$work/check-v2"
"$work/check-v1" 1 > "$work/v1.out"
"$work/check-v2" 2 > "$work/v2.out"
cat "$work/v2.out"
# Identical but for the generation line.
diff <(tail -n +2 "$work/v1.out") <(tail -n +2 "$work/v2.out")
echo "gpiod2-check: libgpiod 1.x and 2.x builds agree"
cd "$repo"

# Shared by the maintainer scripts (package.sh inlines it where #SYSTEMD# stands): what
# debhelper's dh_installsystemd generates, by hand. `deb-systemd-helper` (init-system-helpers,
# on every Debian system) keeps the enable state even where systemd is not running (a
# container, a chroot); then nothing is started or stopped.
pb_systemd_postinst() {  # UNIT "$@" of postinst
  unit=$1; shift
  if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] || [ "$1" = abort-remove ]; then
    deb-systemd-helper unmask "$unit" >/dev/null || true
    if [ -z "$2" ] || deb-systemd-helper --quiet was-enabled "$unit"; then
      deb-systemd-helper enable "$unit" >/dev/null || true
    else
      deb-systemd-helper update-state "$unit" >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
      systemctl --system daemon-reload >/dev/null || true
      # Each unit has a condition (a bundle, a fleet, a config file): before the operator
      # provides it, starting does nothing.
      deb-systemd-invoke restart "$unit" >/dev/null || true
    fi
  fi
}
pb_systemd_prerm() {  # UNIT "$@" of prerm
  if [ -d /run/systemd/system ] && [ "$2" = remove ]; then
    deb-systemd-invoke stop "$1" >/dev/null || true
  fi
}
pb_systemd_postrm() {  # UNIT "$@" of postrm
  unit=$1; shift
  if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
  fi
  if [ "$1" = remove ]; then
    deb-systemd-helper mask "$unit" >/dev/null || true
  fi
  if [ "$1" = purge ]; then
    deb-systemd-helper purge "$unit" >/dev/null || true
    deb-systemd-helper unmask "$unit" >/dev/null || true
  fi
}

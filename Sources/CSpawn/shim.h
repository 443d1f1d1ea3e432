#ifndef PULSEBRIDGE_CSPAWN_SHIM_H
#define PULSEBRIDGE_CSPAWN_SHIM_H

// glibc (2.34+) declares this only under _GNU_SOURCE, which Swift's Glibc module is not built
// with. Declared here on its own (spawn.h is not included, so no type of Glibc's is taken over):
// `actions` is a posix_spawn_file_actions_t *.
extern int posix_spawn_file_actions_addclosefrom_np(void *actions, int from);

#endif

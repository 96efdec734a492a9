#ifndef NBD_CSPAWN_H
#define NBD_CSPAWN_H

#include <spawn.h>

/* posix_spawn_file_actions_addclosefrom_np (glibc >= 2.34), which Swift's Glibc module does
 * not export: a spawned child must not inherit our sockets. */
int cspawn_add_closefrom(posix_spawn_file_actions_t *actions, int lowest);

#endif

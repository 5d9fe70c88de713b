/* privdrop.h - leaving root once the listening sockets are bound. */
#ifndef PRIVDROP_H
#define PRIVDROP_H

/* Switches to user (its group, no supplementary groups) when running as
 * root; warns when root keeps running because no user is set. Called before
 * any client byte is read. 0, or -1 after logging why it failed (the caller
 * exits: running on as root by accident is worse than not running). */
int privdrop_apply(const char *user);

#endif

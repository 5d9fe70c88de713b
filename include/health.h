/* health.h - the health of every backend address, shared by the workers,
 * and the checks that keep it.
 *
 * One table for the process, under one mutex, keyed by backend name and
 * address text, so that an address keeps its state and its session count
 * across reloads. The checks run on the main loop: every health_check
 * seconds each address is connected to and must greet with 220 within
 * connect_timeout (hstate.h: two failures take it out of the rotation, one
 * success brings it back), logged as backend_down / backend_up and shown as
 * ftpsgate_backend_up{backend,address}. The sessions on each address are
 * counted here too (ftpsgate_backend_sessions{backend,address}), and new
 * sessions go to the healthy address with the fewest. */
#ifndef HEALTH_H
#define HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct cfg;
struct cfg_backend;

/* After each load, on the thread that loaded it (a reload's loading
 * thread: ten thousand sites are ten thousand look-ups, kept off the event
 * loops): the addresses of c are the ones checked and shown; those of
 * earlier loads go once no session holds them. */
void health_sync(const struct cfg *c);
/* Starts the checks on loop (the main one). 0 or a libuv error. */
int health_start(uv_loop_t *loop);
/* Stops them (shutdown): checks in flight are dropped. */
void health_stop(void);
/* Frees the table (at exit). */
void health_free(void);

/* Any worker: the address of b a new connect should try, not one of tried
 * (bit i: address i), as hstate_pick() chooses; -1 when none is left. */
int health_pick(const struct cfg_backend *b, uint64_t tried);
/* Whether address addr (its text) of backend is in the rotation (unknown
 * addresses are). */
bool health_up(const char *backend, const char *addr);
/* A session begins / ends on address i of b. */
void health_enter(const struct cfg_backend *b, size_t i);
void health_leave(const struct cfg_backend *b, size_t i);

#endif

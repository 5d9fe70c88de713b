/* quota.h - the process-wide counts behind the limits, shared by every
 * worker thread: control connections (max_sessions), and per client address
 * the sessions (max_sessions_per_ip), passive ports reserved
 * (max_passive_per_ip), running transfers (max_transfers_per_ip) and failed
 * logins (ban_after within ban_window: a ban for ban_time); per backend the
 * sessions (its max_sessions); and the bytes of transfer buffers
 * (transfer_memory).
 *
 * A client address counts per IPv4 address, or per IPv6 /64 (one customer's
 * network, which hands out addresses freely). One mutex guards the tables:
 * they change once per connection, transfer or login, never per byte; the
 * connection and memory counts are atomic.
 *
 * A control connection is counted from accept to close, whoever holds it
 * then: the listener during the PROXY-header stage, the session after. */
#ifndef QUOTA_H
#define QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A control connection was accepted / has closed (every worker). */
void quota_conn_opened(void);
void quota_conn_closed(void);
size_t quota_conns(void);

/* Counts a session from addr against max_sessions (connections open, this
 * one included) and max_sessions_per_ip. Returns NULL, or why it is refused
 * as a short static word (max_sessions, max_sessions_per_ip, out_of_memory);
 * only an admitted address is counted, and quota_leave() uncounts it. */
const char *quota_admit(const struct sockaddr *addr, unsigned max_sessions,
                        unsigned max_per_ip);
void quota_leave(const struct sockaddr *addr);

/* A passive port reserved for addr / a transfer running for addr: false
 * when addr holds max already (nothing is counted then). */
bool quota_passive_enter(const struct sockaddr *addr, unsigned max);
void quota_passive_leave(const struct sockaddr *addr);
bool quota_transfer_enter(const struct sockaddr *addr, unsigned max);
void quota_transfer_leave(const struct sockaddr *addr);

/* Counts a session against a backend's max_sessions (0: no cap). False when
 * the backend is full (nothing is counted then). */
bool quota_backend_enter(const char *backend, unsigned max);
void quota_backend_leave(const char *backend);

/* Bytes of transfer buffers held, whole process. */
void quota_mem_add(int64_t delta);
uint64_t quota_mem(void);

/* Brute-force bans. True while addr is banned. */
bool quota_banned(const struct sockaddr *addr);
/* A 530 to PASS from addr: true when this failure bans it now (the after-th
 * within window seconds; after 0: never), for ban_time seconds. */
bool quota_login_failed(const struct sockaddr *addr, unsigned after, unsigned window,
                        unsigned ban_time);
/* Ends the bans that ran out: unbanned(arg, "203.0.113.7" or "2001:db8::/64")
 * for each. Returns the bans still active. */
typedef void quota_unban_fn(void *arg, const char *who);
size_t quota_sweep(quota_unban_fn *unbanned, void *arg);
/* "203.0.113.7" or "2001:db8:1:2::/64": how addr is counted. */
void quota_who(const struct sockaddr *addr, char *dst, size_t cap);

/* Frees the tables (at exit, once every session is gone). */
void quota_free(void);

#endif

/* ftp.h - pure FTP protocol code: command lines, replies, PASV/EPSV/PORT/EPRT
 * arguments and replies, USER host|user, HOST arguments, FEAT filtering and
 * Telnet IAC stripping. No I/O, no allocation, no globals; every parser takes
 * untrusted bytes and a length (no NUL termination is assumed), and reads
 * numbers digit by digit with explicit ranges. */
#ifndef FTP_H
#define FTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FTP_LINE_MAX 4096 /* longest command line accepted, CRLF excluded */

struct ftp_cmd {
    char verb[5];    /* 1-4 ASCII letters, upper-cased, NUL-terminated */
    const char *arg; /* points into the line after the single space; "" when none */
    size_t arg_len;
};

/* One command line without CRLF. Returns 0 with out filled, or PX_EINVAL for
 * an empty line, a verb that is not 1-4 ASCII letters followed by end of line
 * or a space, or a NUL, CR or LF byte anywhere in the line. */
int ftp_parse_command(const char *line, size_t len, struct ftp_cmd *out);

/* Strips Telnet sequences in place (RFC 854): IAC IAC becomes one 0xFF byte,
 * IAC WILL/WONT/DO/DONT x and IAC x (IP, DM, ...) are removed. Clients send
 * IAC IP IAC DM before ABOR. Returns the new length. */
size_t ftp_strip_telnet(char *line, size_t len);

/* True for verbs whose argument is a secret that must never be logged (PASS, ACCT). */
bool ftp_cmd_is_secret(const struct ftp_cmd *cmd);

/* Replies, fed a line at a time (line without CRLF). */
struct ftp_reply {
    int code;       /* 100..599 from the first line; 0 before it */
    bool multi;     /* first line was "ddd-" */
    bool done;      /* the last line fed ended the reply */
    unsigned lines; /* lines fed so far in this reply */
};

/* Feeds one line of a reply. A fed line after a finished reply starts a new
 * one (r is reset first). Returns 1 when this line ends the reply (r->code is
 * its code), 0 when more lines follow (a multi-line reply ends at a line that
 * starts with the same code and a space), or PX_EPROTO when a first line does
 * not start with three digits in 100..599 followed by a space, a dash or the
 * end of the line. */
int ftp_reply_line(struct ftp_reply *r, const char *line, size_t len);

/* Stream form of the same, for callers (and fuzzers) holding raw bytes:
 * looks at whole LF-terminated lines from the start of p and stops after the
 * line that ends a reply. Returns the bytes that reply took (> 0, r then
 * describes it), 0 when p does not yet hold a complete reply (nothing is
 * consumed and r is left as it was: call again with more bytes), PX_EPROTO
 * for a malformed first line, or PX_EMSGSIZE for a line over FTP_LINE_MAX. */
int ftp_reply_feed(struct ftp_reply *r, const char *p, size_t len);

/* An address and port from PASV/PORT/EPSV/EPRT. */
struct ftp_hostport {
    int family;       /* 4, 6, or 0 when a reply carried no address (EPSV) */
    uint8_t addr[16]; /* 4 bytes used for family 4 */
    uint16_t port;    /* 1..65535 */
};

/* The text of a 227 reply (after the code, e.g. "Entering Passive Mode
 * (h1,h2,h3,h4,p1,p2)."). Finds the first run of six comma-separated numbers,
 * with or without parentheses. Fields 0..255 of at most three digits; the
 * port must not be 0. Returns 0 or PX_EINVAL. */
int ftp_parse_pasv_reply(const char *text, size_t len, struct ftp_hostport *out);

/* The text of a 229 reply: "... (<d><d><d>port<d>)" where <d> is one
 * character in 33..126, not a digit (it would run into the port), used for
 * all four delimiters. Port 1..65535. Returns 0 with out->family 0, or
 * PX_EINVAL. */
int ftp_parse_epsv_reply(const char *text, size_t len, struct ftp_hostport *out);

/* PORT argument "h1,h2,h3,h4,p1,p2". Returns 0 or PX_EINVAL. */
int ftp_parse_port_arg(const char *arg, size_t len, struct ftp_hostport *out);

/* EPRT argument "<d>proto<d>address<d>port<d>" (RFC 2428), <d> as for 229:
 * proto 1 with a dotted IPv4 address or 2 with an IPv6 address, port
 * 1..65535. Returns 0 or PX_EINVAL. */
int ftp_parse_eprt_arg(const char *arg, size_t len, struct ftp_hostport *out);

enum ftp_epsv_arg { FTP_EPSV_ANY = 0, FTP_EPSV_IPV4, FTP_EPSV_IPV6, FTP_EPSV_ALL };
/* EPSV argument: "" (any), "1", "2", or "ALL" (any case). Returns the
 * ftp_epsv_arg value (>= 0), or PX_EINVAL for anything else (the caller
 * answers 522 for an unknown protocol number, 501 otherwise: PX_EINVAL is
 * returned for both; ftp_epsv_arg_is_proto() tells them apart). */
int ftp_parse_epsv_arg(const char *arg, size_t len);
/* True when arg is all digits (a protocol number), so 522 is the reply. */
bool ftp_epsv_arg_is_proto(const char *arg, size_t len);

/* Writes "227 Entering Passive Mode (a,b,c,d,p1,p2).\r\n" / "229 Entering
 * Extended Passive Mode (|||port|)\r\n". Returns the length written (the
 * output is NUL-terminated), or 0 when cap is too small. */
size_t ftp_format_pasv_reply(char *dst, size_t cap, const uint8_t ip4[4], uint16_t port);
size_t ftp_format_epsv_reply(char *dst, size_t cap, uint16_t port);

/* USER argument, "host<sep>user" (IIS style). Splits at the first sep.
 * Returns 1 with host and user set when a sep is present, 0 when absent
 * (user is the whole argument, host NULL and host_len 0), PX_EINVAL when the
 * host or the user part around a sep is empty. */
struct ftp_user_arg {
    const char *host;
    size_t host_len;
    const char *user;
    size_t user_len;
};
int ftp_split_user(const char *arg, size_t len, char sep, struct ftp_user_arg *out);

/* HOST argument (RFC 7151): a DNS name (letters, digits, '-', '.', '_';
 * labels 1..63, total <= 253, one trailing dot allowed) or an IP literal
 * ("[v6]" or dotted IPv4). Returns 0 when it is a name or literal without a
 * port, PX_ERANGE when a ":port" (1..65535) is attached (RFC 7151 answers
 * 501), or PX_EINVAL for anything else. */
int ftp_check_host_arg(const char *arg, size_t len);

/* True when a line of the backend's FEAT reply (one feature line, leading
 * space included, as it came) names a feature the proxy owns and must not
 * pass on: AUTH, PBSZ, PROT, CCC, HOST, EPSV, EPRT, PASV (case-insensitive,
 * the feature name is the first word). */
bool ftp_feat_drop(const char *line, size_t len);

/* One line of the backend's reply to PASV (code 227) or EPSV (229), as it
 * came: a leading "ddd " or "ddd-" is skipped. Returns 0 with *port set from
 * the address the line names, or PX_EINVAL (another code, or no address in
 * this line). The address itself is never used: only the port. */
int ftp_passive_line(int code, const char *line, size_t len, uint16_t *port);

/* Merging the backend's FEAT reply with the proxy's own features, one line
 * at a time (line_no counts from 1; last: this line ends the reply). */
enum ftp_feat_step {
    FTP_FEAT_RELAY = 0,  /* pass the line on as it came */
    FTP_FEAT_DROP,       /* a feature the proxy owns (ftp_feat_drop): leave it out */
    FTP_FEAT_OURS_FIRST, /* the closing line: the proxy's features, then this line */
    FTP_FEAT_OURS_ONLY,  /* a one-line reply (no list, or an error): the proxy's
                            whole list, head and end included, instead */
};
enum ftp_feat_step ftp_feat_step(unsigned line_no, bool last, const char *line, size_t len);

#define FTP_FEAT_HEAD 1u /* "211-Features:" first */
#define FTP_FEAT_EPRT 2u /* active mode is allowed */
#define FTP_FEAT_UTF8 4u /* the pre-login list: UTF8 too */
#define FTP_FEAT_END 8u  /* "211 End" last */
/* The proxy's feature lines (" AUTH TLS", " PBSZ", " PROT", " HOST", " EPSV",
 * " PASV", then " EPRT" and " UTF8" as flags say), each with CRLF. Returns
 * the length written (NUL-terminated), or 0 when cap is too small. */
size_t ftp_feat_own(char *dst, size_t cap, unsigned flags);

/* A ClientHello's ALPN list (RFC 7301: protocol names of 1..255 bytes, each
 * after its length byte). Returns 1 with *at set to the offset of "ftp"'s
 * name when the list offers it, 0 when it does not, PX_EINVAL when the list
 * is malformed (empty, a zero length, or a name running past its end). */
int ftp_alpn_select(const uint8_t *list, size_t len, size_t *at);

/* True when a command line starts with an HTTP method (GET, POST, HEAD, PUT,
 * OPTIONS, CONNECT, TRACE, PATCH) and a space: a browser talking to the FTP
 * port, as in the ALPACA cross-protocol attacks. */
bool ftp_is_http_request(const char *line, size_t len);

/* True for vsftpd's "500 OOPS: ..." (one line): vsftpd writes it as a
 * session process dies, whatever command it answers. */
bool ftp_reply_is_oops(const char *line, size_t len);

#endif

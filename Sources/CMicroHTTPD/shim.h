#ifndef NBD_GATEWAY_MICROHTTPD_SHIM_H
#define NBD_GATEWAY_MICROHTTPD_SHIM_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <microhttpd.h>

/* MHD_SIZE_UNKNOWN and the content-reader sentinels are macros Swift does not import. */
static const uint64_t shim_MHD_SIZE_UNKNOWN = MHD_SIZE_UNKNOWN;
static const ssize_t shim_MHD_CONTENT_READER_END_OF_STREAM = MHD_CONTENT_READER_END_OF_STREAM;
static const ssize_t shim_MHD_CONTENT_READER_END_WITH_ERROR = MHD_CONTENT_READER_END_WITH_ERROR;

/* MHD_start_daemon is variadic: pass the options as one MHD_OPTION_ARRAY. */
static inline struct MHD_Daemon *shim_MHD_start_daemon(
    unsigned int flags, uint16_t port,
    MHD_AccessHandlerCallback handler, void *handler_cls,
    struct MHD_OptionItem *options)
{
    return MHD_start_daemon(flags, port, NULL, NULL, handler, handler_cls,
                            MHD_OPTION_ARRAY, options, MHD_OPTION_END);
}

/* The port actually bound (for port 0). */
static inline uint16_t shim_MHD_bound_port(struct MHD_Daemon *daemon)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    return info == NULL ? 0 : info->port;
}

/* Option items whose value is a pointer (MHD_OptionItem.ptr_value). */
static inline struct MHD_OptionItem shim_option_pointer(enum MHD_OPTION option, intptr_t value, void *pointer)
{
    struct MHD_OptionItem item = { option, value, pointer };
    return item;
}

static inline struct MHD_OptionItem shim_option_completed(MHD_RequestCompletedCallback callback, void *cls)
{
    struct MHD_OptionItem item = { MHD_OPTION_NOTIFY_COMPLETED, (intptr_t) callback, cls };
    return item;
}

/* Keeps %XX escapes in the URL and query as sent: the gateway routes on the raw path and
 * decodes names and values itself (an export named a/b arrives as a%2Fb). */
static size_t shim_keep_escapes(void *cls, struct MHD_Connection *connection, char *text)
{
    (void) cls;
    (void) connection;
    return strlen(text);
}

static inline struct MHD_OptionItem shim_option_keep_escapes(void)
{
    struct MHD_OptionItem item = { MHD_OPTION_UNESCAPE_CALLBACK, (intptr_t) &shim_keep_escapes, NULL };
    return item;
}

static inline struct MHD_OptionItem shim_option_value(enum MHD_OPTION option, intptr_t value)
{
    struct MHD_OptionItem item = { option, value, NULL };
    return item;
}

static inline struct MHD_OptionItem shim_option_end(void)
{
    struct MHD_OptionItem item = { MHD_OPTION_END, 0, NULL };
    return item;
}

/* The connection's peer address (MHD_get_connection_info is variadic). */
static inline const struct sockaddr *shim_MHD_client_address(struct MHD_Connection *connection)
{
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    return info == NULL ? NULL : info->client_addr;
}

/* MHD_start_daemon with an accept policy callback (checked for every accepted connection). */
static inline struct MHD_Daemon *shim_MHD_start_daemon_policy(
    unsigned int flags, uint16_t port,
    MHD_AcceptPolicyCallback policy, void *policy_cls,
    MHD_AccessHandlerCallback handler, void *handler_cls,
    struct MHD_OptionItem *options)
{
    return MHD_start_daemon(flags, port, policy, policy_cls, handler, handler_cls,
                            MHD_OPTION_ARRAY, options, MHD_OPTION_END);
}

static inline struct MHD_OptionItem shim_option_notify_connection(MHD_NotifyConnectionCallback callback, void *cls)
{
    struct MHD_OptionItem item = { MHD_OPTION_NOTIFY_CONNECTION, (intptr_t) callback, cls };
    return item;
}

/* The connection's inactivity timeout in seconds (MHD_set_connection_option is variadic). */
static inline void shim_MHD_set_timeout(struct MHD_Connection *connection, unsigned int seconds)
{
    MHD_set_connection_option(connection, MHD_CONNECTION_OPTION_TIMEOUT, seconds);
}

/* The connection's socket, or -1. */
static inline int shim_MHD_connection_fd(struct MHD_Connection *connection)
{
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info == NULL ? -1 : info->connect_fd;
}

#endif

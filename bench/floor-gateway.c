/* A floor for HTTP-to-NBD gateways on libmicrohttpd 0.9.75, for scripts/bench-gateway and
 * scripts/bench-copy: the gateway's benchmarked work done by the design issue 14 names as the
 * lever that remains, in C, so every figure can be set beside what that design costs here.
 *
 * One thread and no hop between threads: libmicrohttpd is driven from our own epoll (external
 * polling, MHD_run) beside one libnbd connection in asynchronous mode. It does only this:
 *   - GET with one `Range: bytes=A-B` of up to 1 MiB: read whole, answered from the buffer (206);
 *   - any other GET of the data (a malformed or larger Range too): the whole disk, 200, streamed
 *     by a content reader that copies out of 256 KiB reads, 4 in flight (libmicrohttpd cannot
 *     send a stream from buffers it does not own);
 *   - PUT: the body cut into 1 MiB writes, 8 in flight, then 204. No FLUSH: the gateway sends
 *     one after a PUT to a multi-conn export (free on the benchmark's tmpfs file);
 *   - for `nbd copy` from `http://HOST:PORT/exports/disk/data` (scripts/bench-copy): the export's
 *     metadata at /exports/disk and its base:allocation map at /exports/disk/extents, in the
 *     gateway's JSON. Any other path is the data.
 * No authentication, logging, metrics, validation or error statuses. What the gateway costs
 * beyond this is the price of its features, its language and its threads, at the same
 * libmicrohttpd settings. It is one design at one set of settings, not a proof about every
 * possible server: other settings can be tried below.
 *
 * Build: cc -O2 -o floor-gateway bench/floor-gateway.c $(pkg-config --cflags --libs libmicrohttpd libnbd)
 * Run:   floor-gateway NBD_URI PORT   (listens on 127.0.0.1)
 * It runs with the gateway's libmicrohttpd settings (64 KiB of memory per connection). To try
 * others: FLOOR_CONNECTION_MEMORY=BYTES, and FLOOR_TURBO=1 for MHD_USE_TURBO. */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#define READ_CHUNK (256 * 1024)
#define READ_DEPTH 4
#define WRITE_CHUNK (1024 * 1024)
#define WRITE_DEPTH 8
#define RANGE_LIMIT (1024 * 1024)

static struct nbd_handle *nbd;
static int64_t disk_size;

static void *checked_malloc(size_t size) {
  void *p = malloc(size);
  if (!p) { perror("malloc"); exit(1); }
  return p;
}

static void nbd_failed(void) { fprintf(stderr, "floor-gateway: %s\n", nbd_get_error()); exit(1); }

struct slot { char *buf; uint64_t len; int state; /* 0 waiting, 1 ready, -1 failed */ };

struct request {
  struct MHD_Connection *connection;
  int started, suspended, failed;
  /* NBD commands not yet completed; once libmicrohttpd is done with the request (gone), the
   * last completion frees it: libnbd writes into its buffers until then. */
  unsigned commands; int gone;
  /* ranged GET */
  char *range_buf; uint64_t range_off, range_len; int range_done;
  /* streamed GET: a ring of reads; head is the next to hand out */
  struct slot ring[READ_DEPTH]; unsigned head, issued; uint64_t head_used, next_read;
  /* PUT: the write being filled, spare buffers, writes in flight */
  char *fill; size_t filled; uint64_t write_off; char *spare[WRITE_DEPTH]; unsigned spares;
};

struct completion { struct request *request; unsigned slot; char *buf; };

/* Set when a connection is resumed during MHD_run (a synchronous map request completes others):
 * the loop then polls without waiting, as libmicrohttpd's own timeout does not count them. */
static int resumed;

static void resume(struct request *r) {
  if (r->suspended) { r->suspended = 0; resumed = 1; MHD_resume_connection(r->connection); }
}

static void release(struct request *r) {
  free(r->range_buf);
  for (unsigned i = 0; i < READ_DEPTH; i++) free(r->ring[i].buf);
  free(r->fill);
  while (r->spares > 0) free(r->spare[--r->spares]);
  free(r);
}

/* A completion callback's last step. */
static int command_done(struct request *r) {
  r->commands--;
  if (!r->gone) resume(r);
  else if (r->commands == 0) release(r);
  return 1;
}

static void suspend(struct request *r) {
  r->suspended = 1;
  MHD_suspend_connection(r->connection);
}

static int range_read_done(void *user_data, int *error) {
  struct request *r = user_data;
  r->range_done = 1; r->failed |= *error != 0;
  return command_done(r);
}

static int stream_read_done(void *user_data, int *error) {
  struct completion *c = user_data;
  struct request *r = c->request;
  r->ring[c->slot].state = *error ? -1 : 1;
  free(c);
  return command_done(r);
}

static void issue_stream_reads(struct request *r) {
  while (r->issued < READ_DEPTH && r->next_read < (uint64_t)disk_size) {
    unsigned i = (r->head + r->issued) % READ_DEPTH;
    struct slot *s = &r->ring[i];
    uint64_t left = (uint64_t)disk_size - r->next_read;
    s->len = left < READ_CHUNK ? left : READ_CHUNK;
    s->state = 0;
    struct completion *c = checked_malloc(sizeof *c);
    *c = (struct completion){ .request = r, .slot = i };
    if (nbd_aio_pread(nbd, s->buf, s->len, r->next_read,
                      (nbd_completion_callback){ .callback = stream_read_done, .user_data = c }, 0) < 0)
      nbd_failed();
    r->commands++; r->next_read += s->len; r->issued++;
  }
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max) {
  struct request *r = cls;
  size_t n = 0;
  (void)pos;
  while (n < max && r->issued > 0) {
    struct slot *s = &r->ring[r->head];
    if (s->state < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    if (s->state == 0) break;
    size_t take = s->len - r->head_used;
    if (take > max - n) take = max - n;
    memcpy(out + n, s->buf + r->head_used, take);
    n += take; r->head_used += take;
    if (r->head_used == s->len) { r->head = (r->head + 1) % READ_DEPTH; r->head_used = 0; r->issued--; }
  }
  issue_stream_reads(r);
  if (n == 0) suspend(r);  /* returning 0 without suspending would spin */
  return (ssize_t)n;
}

static int write_done(void *user_data, int *error) {
  struct completion *c = user_data;
  struct request *r = c->request;
  r->failed |= *error != 0;
  r->spare[r->spares++] = c->buf;
  free(c);
  return command_done(r);
}

static void send_filled_write(struct request *r) {
  struct completion *c = checked_malloc(sizeof *c);
  *c = (struct completion){ .request = r, .buf = r->fill };
  if (nbd_aio_pwrite(nbd, r->fill, r->filled, r->write_off,
                     (nbd_completion_callback){ .callback = write_done, .user_data = c }, 0) < 0)
    nbd_failed();
  r->write_off += r->filled; r->commands++;
  r->fill = r->spares ? r->spare[--r->spares] : NULL; r->filled = 0;
}

static enum MHD_Result queue(struct MHD_Connection *connection, unsigned status, struct MHD_Response *response) {
  enum MHD_Result result = MHD_queue_response(connection, status, response);
  MHD_destroy_response(response);
  return result;
}

static enum MHD_Result empty(struct MHD_Connection *connection, unsigned status) {
  return queue(connection, status, MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT));
}

static enum MHD_Result handle_put(struct request *r, const char *upload, size_t *upload_size) {
  if (!r->started) {
    r->started = 1;
    for (unsigned i = 0; i < WRITE_DEPTH; i++) r->spare[r->spares++] = checked_malloc(WRITE_CHUNK);
    r->fill = r->spare[--r->spares];
  }
  if (*upload_size > 0) {
    size_t consumed = 0;
    while (consumed < *upload_size) {
      if (!r->fill && r->spares > 0) r->fill = r->spare[--r->spares];
      if (!r->fill) { suspend(r); break; }  /* every buffer in flight: the rest is handed again */
      size_t take = WRITE_CHUNK - r->filled;
      if (take > *upload_size - consumed) take = *upload_size - consumed;
      memcpy(r->fill + r->filled, upload + consumed, take);
      r->filled += take; consumed += take;
      if (r->filled == WRITE_CHUNK) send_filled_write(r);
    }
    *upload_size -= consumed;
    return MHD_YES;
  }
  if (r->filled > 0) { send_filled_write(r); }
  if (r->commands > 0) { suspend(r); return MHD_YES; }
  return empty(r->connection, r->failed ? 500 : 204);
}

static enum MHD_Result handle_get(struct request *r) {
  if (!r->started) {
    r->started = 1;
    const char *range = MHD_lookup_connection_value(r->connection, MHD_HEADER_KIND, "Range");
    uint64_t first, last;
    if (range && sscanf(range, "bytes=%" SCNu64 "-%" SCNu64, &first, &last) == 2 && first <= last &&
        last < (uint64_t)disk_size && last - first < RANGE_LIMIT) {
      r->range_off = first; r->range_len = last - first + 1;
      r->range_buf = checked_malloc(r->range_len);
      if (nbd_aio_pread(nbd, r->range_buf, r->range_len, first,
                        (nbd_completion_callback){ .callback = range_read_done, .user_data = r }, 0) < 0)
        nbd_failed();
      r->commands++;
      suspend(r);
      return MHD_YES;
    }
    for (unsigned i = 0; i < READ_DEPTH; i++) r->ring[i].buf = checked_malloc(READ_CHUNK);
    issue_stream_reads(r);
    return queue(r->connection, 200,
                 MHD_create_response_from_callback((uint64_t)disk_size, READ_CHUNK, stream_reader, r, NULL));
  }
  if (!r->range_done || !r->range_buf) return MHD_YES;
  if (r->failed) return empty(r->connection, 500);
  struct MHD_Response *response = MHD_create_response_from_buffer(r->range_len, r->range_buf, MHD_RESPMEM_MUST_FREE);
  r->range_buf = NULL;
  char content_range[96];
  snprintf(content_range, sizeof content_range, "bytes %" PRIu64 "-%" PRIu64 "/%" PRId64,
           r->range_off, r->range_off + r->range_len - 1, disk_size);
  MHD_add_response_header(response, "Content-Range", content_range);
  return queue(r->connection, 206, response);
}

/* A JSON answer built with printf, grown as needed. */
struct text { char *bytes; size_t length, capacity; };

static void append(struct text *t, const char *format, ...) __attribute__((format(printf, 2, 3)));
static void append(struct text *t, const char *format, ...) {
  if (!t->bytes) {
    t->capacity = 4096;
    t->bytes = checked_malloc(t->capacity);
  }
  for (;;) {
    va_list arguments;
    va_start(arguments, format);
    int n = vsnprintf(t->bytes + t->length, t->capacity - t->length, format, arguments);
    va_end(arguments);
    if (n < 0) { perror("vsnprintf"); exit(1); }
    if ((size_t)n < t->capacity - t->length) { t->length += (size_t)n; return; }
    t->capacity = 2 * t->capacity + (size_t)n + 256;
    t->bytes = realloc(t->bytes, t->capacity);
    if (!t->bytes) { perror("realloc"); exit(1); }
  }
}

static enum MHD_Result json(struct MHD_Connection *connection, struct text *t) {
  struct MHD_Response *response = MHD_create_response_from_buffer(t->length, t->bytes, MHD_RESPMEM_MUST_FREE);
  MHD_add_response_header(response, "Content-Type", "application/json");
  return queue(connection, 200, response);
}

static enum MHD_Result metadata(struct MHD_Connection *connection) {
  struct text t = { 0 };
  append(&t, "{\"name\":\"disk\",\"description\":\"\",\"size\":%" PRId64 ",\"read_only\":%s,\"rotational\":false,"
         "\"can_flush\":%s,\"can_fua\":%s,\"can_trim\":%s,\"can_zero\":%s,\"can_fast_zero\":%s,\"can_df\":%s,"
         "\"can_multi_conn\":%s,\"can_cache\":%s,\"block_size\":{\"minimum\":1,\"preferred\":4096,\"maximum\":33554432},"
         "\"contexts\":[\"base:allocation\"],\"structured_replies\":true}",
         disk_size, nbd_is_read_only(nbd) == 1 ? "true" : "false",
         nbd_can_flush(nbd) == 1 ? "true" : "false", nbd_can_fua(nbd) == 1 ? "true" : "false",
         nbd_can_trim(nbd) == 1 ? "true" : "false", nbd_can_zero(nbd) == 1 ? "true" : "false",
         nbd_can_fast_zero(nbd) == 1 ? "true" : "false", nbd_can_df(nbd) == 1 ? "true" : "false",
         nbd_can_multi_conn(nbd) == 1 ? "true" : "false", nbd_can_cache(nbd) == 1 ? "true" : "false");
  return json(connection, &t);
}

struct extent_page { struct text *t; uint64_t offset, limit, covered; int any; };

static int add_extents(void *user_data, const char *context, uint64_t offset, uint32_t *entries,
                       size_t count, int *error) {
  struct extent_page *page = user_data;
  (void)offset; (void)error;
  if (strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0) return 0;
  for (size_t i = 0; i + 1 < count && page->covered < page->limit; i += 2) {
    uint64_t length = entries[i];  /* the last may reach past what was asked: clipped */
    if (length > page->limit - page->covered) length = page->limit - page->covered;
    append(page->t, "%s{\"offset\":%" PRIu64 ",\"length\":%" PRIu64 ",\"hole\":%s,\"zero\":%s}", page->any ? "," : "",
           page->offset + page->covered, length, (entries[i + 1] & LIBNBD_STATE_HOLE) ? "true" : "false",
           (entries[i + 1] & LIBNBD_STATE_ZERO) ? "true" : "false");
    page->covered += length; page->any = 1;
  }
  return 0;
}

/* One page of the map, asked synchronously: a copy asks once or twice before it starts. */
static enum MHD_Result extents(struct MHD_Connection *connection) {
  const char *offset_text = MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "offset");
  const char *length_text = MHD_lookup_connection_value(connection, MHD_GET_ARGUMENT_KIND, "length");
  uint64_t offset = offset_text ? strtoull(offset_text, NULL, 10) : 0;
  uint64_t length = length_text ? strtoull(length_text, NULL, 10) : (uint64_t)disk_size - offset;
  if (offset > (uint64_t)disk_size) return empty(connection, 416);
  if (length > (uint64_t)disk_size - offset) length = (uint64_t)disk_size - offset;
  if (length > (1u << 31)) length = 1u << 31;
  struct text t = { 0 };
  append(&t, "{\"extents\":[");
  struct extent_page page = { .t = &t, .offset = offset, .limit = length };
  if (length > 0 && nbd_block_status(nbd, length, offset,
                                     (nbd_extent_callback){ .callback = add_extents, .user_data = &page }, 0) < 0)
    nbd_failed();
  append(&t, "],\"offset\":%" PRIu64 ",\"length\":%" PRIu64 "}", offset, page.covered);
  return json(connection, &t);
}

static int ends_with(const char *text, const char *suffix) {
  size_t n = strlen(text), m = strlen(suffix);
  return n >= m && strcmp(text + n - m, suffix) == 0;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *connection, const char *url,
                               const char *method, const char *version, const char *upload,
                               size_t *upload_size, void **context) {
  (void)cls; (void)version;
  struct request *r = *context;
  if (!r) {  /* the first call only sees the headers */
    r = calloc(1, sizeof *r);
    if (!r) return MHD_NO;
    r->connection = connection;
    *context = r;
    return MHD_YES;
  }
  if (strcmp(method, "PUT") == 0) return handle_put(r, upload, upload_size);
  if (strcmp(method, "GET") == 0 && strcmp(url, "/exports/disk") == 0) return metadata(connection);
  if (strcmp(method, "GET") == 0 && ends_with(url, "/extents")) return extents(connection);
  if (strcmp(method, "GET") == 0) return handle_get(r);
  return empty(connection, 405);
}

/* libmicrohttpd is done with the request (answered, failed or cut by the client); reads and
 * writes still in flight keep it until their completions. */
static void completed(void *cls, struct MHD_Connection *connection, void **context,
                      enum MHD_RequestTerminationCode code) {
  (void)cls; (void)connection; (void)code;
  struct request *r = *context;
  if (!r) return;
  *context = NULL;
  r->gone = 1;
  if (r->commands == 0) release(r);
}

static void watch(int epoll, int op, int fd, uint32_t events) {
  struct epoll_event event = { .events = events, .data.fd = fd };
  if (epoll_ctl(epoll, op, fd, &event) < 0) { perror("epoll_ctl"); exit(1); }
}

int main(int argc, char **argv) {
  if (argc != 3) { fprintf(stderr, "usage: floor-gateway NBD_URI PORT\n"); return 2; }
  nbd = nbd_create();
  if (!nbd || nbd_add_meta_context(nbd, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 || nbd_connect_uri(nbd, argv[1]) < 0)
    nbd_failed();
  disk_size = nbd_get_size(nbd);
  if (disk_size < 0) nbd_failed();
  struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2])),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  const char *memory = getenv("FLOOR_CONNECTION_MEMORY");
  const char *turbo = getenv("FLOOR_TURBO");
  struct MHD_Daemon *daemon = MHD_start_daemon(
      MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | (turbo && strcmp(turbo, "1") == 0 ? MHD_USE_TURBO : 0),
      0, NULL, NULL, handler, NULL,
      MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&address,
      MHD_OPTION_NOTIFY_COMPLETED, completed, NULL,
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(memory ? strtoul(memory, NULL, 10) : 65536),
      MHD_OPTION_END);
  if (!daemon) { fprintf(stderr, "floor-gateway: libmicrohttpd did not start\n"); return 1; }
  int http_fd = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_EPOLL_FD)->epoll_fd;
  int nbd_fd = nbd_aio_get_fd(nbd);
  int epoll = epoll_create1(EPOLL_CLOEXEC);
  if (epoll < 0) { perror("epoll_create1"); return 1; }
  watch(epoll, EPOLL_CTL_ADD, http_fd, EPOLLIN);
  uint32_t nbd_events = EPOLLIN;
  watch(epoll, EPOLL_CTL_ADD, nbd_fd, nbd_events);
  for (;;) {
    uint32_t wanted = EPOLLIN | ((nbd_aio_get_direction(nbd) & LIBNBD_AIO_DIRECTION_WRITE) ? EPOLLOUT : 0);
    if (wanted != nbd_events) { nbd_events = wanted; watch(epoll, EPOLL_CTL_MOD, nbd_fd, wanted); }
    MHD_UNSIGNED_LONG_LONG http_timeout;
    int timeout = MHD_get_timeout(daemon, &http_timeout) == MHD_YES && http_timeout < 1000 ? (int)http_timeout : 1000;
    if (resumed) timeout = 0;
    struct epoll_event events[4];
    int n = epoll_wait(epoll, events, 4, timeout);
    if (n < 0 && errno != EINTR) { perror("epoll_wait"); return 1; }
    for (int i = 0; i < n; i++) {
      if (events[i].data.fd != nbd_fd) continue;
      if ((events[i].events & EPOLLIN) && nbd_aio_notify_read(nbd) < 0) nbd_failed();
      if ((events[i].events & EPOLLOUT) && nbd_aio_notify_write(nbd) < 0) nbd_failed();
    }
    resumed = 0;  /* resumed above: this MHD_run serves them; during it: the next poll must not wait */
    MHD_run(daemon);
  }
}

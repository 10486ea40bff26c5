/* The benchmark's load generator: a thread per connection, each in a closed
 * request/reply loop, so that the servers under test, not the generator, set
 * the rate. Written in C because a Python generator saturates before the
 * fastest servers do.
 *
 *   load MODE PORT CONNECTIONS START_NS END_NS [FILE]
 *
 * MODE is persistent (one connection per thread, 'send time' after 'send
 * time'), per-request (a new connection for every request), ntp (48-byte
 * NTP client requests over UDP) or datagrams (the NTP requests in FILE, made
 * ahead of time, each a 2-byte big-endian length and the datagram: NTS
 * requests, say; a reply answers the request whose transmit timestamp it
 * carries as its origin). The server is on 127.0.0.1. START_NS and
 * END_NS are CLOCK_MONOTONIC times: requests sent before START_NS warm up
 * and are not counted, none is sent after END_NS. At the end it prints one
 * line of key=value figures: the replies counted, the bad ones (a failed
 * connect, read or reply), and the median and 99th percentile latency.
 * Then it waits for its standard input to close before it exits, so that
 * the benchmark can read its CPU time from /proc, as it reads the server's.
 *
 * Built by scripts/bench.py with the system's C compiler: cc -O2 -pthread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define REPLY_BYTES 33 /* 2026-11-27T10:15:42.000000+01:00 and LF */
#define NTP_BYTES 48
#define READ_TIMEOUT 2 /* seconds; a TCP read or an NTP reply later than this is bad */
#define MAX_CONNECTIONS 1024
#define MAX_DATAGRAMS 65536
#define DATAGRAM_BYTES 2048

enum mode { PERSISTENT, PER_REQUEST, NTP, DATAGRAMS };

struct worker {
    pthread_t thread;
    int64_t *latencies;
    size_t count, room;
    long bad;
};

static enum mode mode;
static unsigned char *pool[MAX_DATAGRAMS]; /* datagrams mode: the requests */
static size_t pool_bytes[MAX_DATAGRAMS], pool_count;
static struct sockaddr_in server = {.sin_family = AF_INET};
static int64_t start_ns, end_ns;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void record(struct worker *w, int64_t latency) {
    if (w->count == w->room) {
        w->room = w->room ? 2 * w->room : 4096;
        w->latencies = realloc(w->latencies, w->room * sizeof *w->latencies);
        if (w->latencies == NULL) {
            perror("realloc");
            exit(1);
        }
    }
    w->latencies[w->count++] = latency;
}

static int open_socket(int type) {
    int fd = socket(AF_INET, type, 0);
    if (fd < 0)
        return -1;
    struct timeval timeout = {.tv_sec = READ_TIMEOUT};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    if (type == SOCK_STREAM) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    if (connect(fd, (struct sockaddr *)&server, sizeof server) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Send 'send time' and read up to the reply's LF; its length, or -1. */
static ssize_t ask_time(int fd) {
    static const char request[] = "send time\n";
    char reply[256];
    size_t got = 0;
    if (send(fd, request, sizeof request - 1, MSG_NOSIGNAL) != sizeof request - 1)
        return -1;
    while (got == 0 || reply[got - 1] != '\n') {
        ssize_t n = recv(fd, reply + got, sizeof reply - got, 0);
        if (n <= 0 || (got += (size_t)n) == sizeof reply)
            return -1;
    }
    return (ssize_t)got;
}

/* One NTP exchange: a version 4 client request whose transmit timestamp is
 * `tag`; 0 for a reply that answers it (48 bytes, origin = tag, stratum set). */
static int ask_ntp(int fd, uint64_t tag) {
    unsigned char request[NTP_BYTES] = {0x23}, reply[512];
    memcpy(request + 40, &tag, sizeof tag);
    if (send(fd, request, sizeof request, 0) != sizeof request)
        return -1;
    for (;;) { /* a late reply to a request counted lost is passed over */
        ssize_t n = recv(fd, reply, sizeof reply, 0);
        if (n < 0)
            return -1;
        if (n == NTP_BYTES && memcmp(reply + 24, &tag, sizeof tag) == 0)
            return reply[1] == 0 ? -1 : 0;
    }
}

/* One exchange of a request made ahead of time; 0 for a reply that answers
 * it (its origin is the request's transmit timestamp, stratum set). */
static int ask_datagram(int fd, size_t index) {
    unsigned char reply[DATAGRAM_BYTES];
    const unsigned char *request = pool[index];
    if (send(fd, request, pool_bytes[index], 0) != (ssize_t)pool_bytes[index])
        return -1;
    for (;;) {
        ssize_t n = recv(fd, reply, sizeof reply, 0);
        if (n < 0)
            return -1;
        if (n >= NTP_BYTES && memcmp(reply + 24, request + 40, 8) == 0)
            return reply[1] == 0 ? -1 : 0;
    }
}

/* The requests of FILE, for the datagrams mode; 0 if there are none. */
static size_t read_pool(const char *path) {
    FILE *in = fopen(path, "rb");
    unsigned char length[2];
    if (in == NULL) {
        perror(path);
        return 0;
    }
    while (pool_count < MAX_DATAGRAMS && fread(length, 1, 2, in) == 2) {
        size_t bytes = (size_t)length[0] << 8 | length[1];
        unsigned char *datagram = malloc(bytes ? bytes : 1);
        if (bytes < NTP_BYTES || datagram == NULL ||
            fread(datagram, 1, bytes, in) != bytes) {
            free(datagram);
            break;
        }
        pool[pool_count] = datagram;
        pool_bytes[pool_count++] = bytes;
    }
    fclose(in);
    return pool_count;
}

static void *run(void *arg) {
    struct worker *w = arg;
    int fd = -1;
    uint64_t tag = (uint64_t)(uintptr_t)w << 20;
    for (;;) {
        int64_t t0 = now_ns();
        int ok;
        if (fd < 0)
            fd = open_socket(mode == NTP || mode == DATAGRAMS ? SOCK_DGRAM : SOCK_STREAM);
        if (fd < 0)
            ok = 0;
        else if (mode == NTP)
            ok = ask_ntp(fd, ++tag) == 0;
        else if (mode == DATAGRAMS)
            ok = ask_datagram(fd, (size_t)(++tag) % pool_count) == 0;
        else
            ok = ask_time(fd) == REPLY_BYTES;
        if (fd >= 0 && (mode == PER_REQUEST || !ok)) {
            close(fd);
            fd = -1;
        }
        int64_t t1 = now_ns();
        if (!ok)
            w->bad++;
        else if (t0 >= start_ns)
            record(w, t1 - t0);
        if (t1 >= end_ns)
            break;
    }
    if (fd >= 0)
        close(fd);
    return NULL;
}

static int by_value(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 6 && !(argc == 7 && strcmp(argv[1], "datagrams") == 0)) {
        fprintf(stderr, "usage: load persistent|per-request|ntp PORT CONNECTIONS "
                        "START_NS END_NS, or load datagrams ... END_NS FILE\n");
        return 2;
    }
    mode = strcmp(argv[1], "ntp") == 0           ? NTP
           : strcmp(argv[1], "datagrams") == 0   ? DATAGRAMS
           : strcmp(argv[1], "per-request") == 0 ? PER_REQUEST
                                                 : PERSISTENT;
    if (mode == DATAGRAMS && read_pool(argv[6]) == 0) {
        fprintf(stderr, "load: no requests in %s\n", argv[6]);
        return 2;
    }
    int connections = atoi(argv[3]);
    if (connections < 1 || connections > MAX_CONNECTIONS) {
        fprintf(stderr, "load: 1 to %d connections\n", MAX_CONNECTIONS);
        return 2;
    }
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    server.sin_port = htons((uint16_t)atoi(argv[2]));
    start_ns = strtoll(argv[4], NULL, 10);
    end_ns = strtoll(argv[5], NULL, 10);

    struct worker *workers = calloc((size_t)connections, sizeof *workers);
    for (int i = 0; i < connections; i++) {
        if (pthread_create(&workers[i].thread, NULL, run, &workers[i]) != 0) {
            perror("pthread_create");
            return 1;
        }
    }
    size_t total = 0;
    long bad = 0;
    for (int i = 0; i < connections; i++) {
        pthread_join(workers[i].thread, NULL);
        total += workers[i].count;
        bad += workers[i].bad;
    }
    int64_t *all = malloc((total ? total : 1) * sizeof *all);
    size_t at = 0;
    for (int i = 0; i < connections; i++) {
        memcpy(all + at, workers[i].latencies, workers[i].count * sizeof *all);
        at += workers[i].count;
        free(workers[i].latencies);
    }
    qsort(all, total, sizeof *all, by_value);
    printf("replies=%zu bad=%ld p50_ns=%lld p99_ns=%lld\n", total, bad,
           total ? (long long)all[total / 2] : 0LL,
           total ? (long long)all[total * 99 / 100] : 0LL);
    fflush(stdout);
    free(all);
    free(workers);
    char byte;
    while (read(0, &byte, 1) > 0) /* until the benchmark has read the CPU time */
        ;
    return 0;
}

/* The limit on this machine, as a benchmark peer: a minimal single-threaded
 * server around epoll that answers 'send time' in timeservice's timestamp
 * format (RFC 3339, microseconds, the local UTC offset), one line per request
 * line, pipelined requests in order. It listens on a free loopback port and
 * prints it. No limits, no logging: only what the benchmark needs.
 *
 * Built by scripts/bench.py with the system's C compiler: cc -O2.
 */
#define _GNU_SOURCE /* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define MAX_LINE 256

struct connection {
    int fd;
    size_t used;
    char buffer[MAX_LINE + 2];
};

static size_t format_now(char *out) {
    struct timespec now;
    struct tm local;
    clock_gettime(CLOCK_REALTIME, &now);
    localtime_r(&now.tv_sec, &local);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &local);
    long offset = local.tm_gmtoff / 60;
    char sign = offset < 0 ? '-' : '+';
    if (offset < 0)
        offset = -offset;
    n += sprintf(out + n, ".%06ld%c%02ld:%02ld\n", now.tv_nsec / 1000, sign,
                 offset / 60, offset % 60);
    return n;
}

static int answer(struct connection *c) {
    static const char unknown[] = "ERR unknown request, expected 'send time'\n";
    char replies[4096];
    size_t out = 0;
    char *start = c->buffer, *end = c->buffer + c->used, *newline;
    while ((newline = memchr(start, '\n', (size_t)(end - start))) != NULL) {
        size_t length = (size_t)(newline - start);
        if (length && start[length - 1] == '\r')
            length--;
        if (out + 64 > sizeof replies) {
            if (write(c->fd, replies, out) != (ssize_t)out)
                return -1;
            out = 0;
        }
        if (length == 9 && memcmp(start, "send time", 9) == 0) {
            out += format_now(replies + out);
        } else {
            memcpy(replies + out, unknown, sizeof unknown - 1);
            out += sizeof unknown - 1;
        }
        start = newline + 1;
    }
    c->used = (size_t)(end - start);
    memmove(c->buffer, start, c->used);
    if (c->used > MAX_LINE)
        return -1; /* a line too long: close */
    if (out && write(c->fd, replies, out) != (ssize_t)out)
        return -1; /* a client that does not read: close */
    return 0;
}

int main(void) {
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = {.sin_family = AF_INET};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof address;
    if (bind(listener, (struct sockaddr *)&address, size) || listen(listener, SOMAXCONN)) {
        perror("listen");
        return 1;
    }
    getsockname(listener, (struct sockaddr *)&address, &size);
    printf("Serving on port %d\n", ntohs(address.sin_port));
    fflush(stdout);

    int poll = epoll_create1(0);
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(poll, EPOLL_CTL_ADD, listener, &event);
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int ready = epoll_wait(poll, events, MAX_EVENTS, -1);
        if (ready < 0 && errno != EINTR)
            return 1;
        for (int i = 0; i < ready; i++) {
            struct connection *c = events[i].data.ptr;
            if (c == NULL) { /* the listener: accept all that wait */
                int fd;
                while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c = calloc(1, sizeof *c);
                    c->fd = fd;
                    struct epoll_event add = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(poll, EPOLL_CTL_ADD, fd, &add);
                }
                continue;
            }
            ssize_t got = read(c->fd, c->buffer + c->used, sizeof c->buffer - c->used);
            if (got < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (got <= 0 || (c->used += (size_t)got, answer(c) < 0)) {
                close(c->fd); /* also takes it out of the epoll set */
                free(c);
            }
        }
    }
}

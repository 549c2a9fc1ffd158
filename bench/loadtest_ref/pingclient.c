/* A wrk-class reference for the TCP line protocol: `PING\n` -> `PONG\n` round trips.
 *
 * One thread, epoll, N connections each with one request in flight, like
 * `service loadtest tcp --scenario tcp-ping -c N`. bench_loadtest.py compiles
 * it (when a C compiler is present) to check that the Python client is within
 * 10% of what a C client gets from the same server.
 *
 *   pingclient HOST PORT CONNECTIONS SECONDS   -> prints "<round trips> <seconds>"
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SECONDS\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[3]);
    double seconds = atof(argv[4]);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1) return 2;
    int ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("connect"); return 1; }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        if (write(fd, "PING\n", 5) != 5) return 1;
    }
    long done = 0;
    char buf[4096];
    struct epoll_event events[256];
    double start = now(), end = start + seconds;
    while (now() < end) {
        int k = epoll_wait(ep, events, 256, 100);
        for (int i = 0; i < k; i++) {
            int fd = events[i].data.fd;
            ssize_t got = read(fd, buf, sizeof buf);
            if (got <= 0) { fprintf(stderr, "connection lost\n"); return 1; }
            for (ssize_t j = 0; j < got; j++) {
                if (buf[j] == '\n') {
                    done++;
                    if (write(fd, "PING\n", 5) != 5) return 1;
                }
            }
        }
    }
    printf("%ld %.6f\n", done, now() - start);
    return 0;
}

/* A wrk-class reference for the TCP line protocol: `PING\n` -> `PONG\n` round trips.
 *
 * One thread, epoll, N connections each with one request in flight, like
 * `service loadtest tcp --scenario tcp-ping -c N`. bench_loadtest.py compiles
 * it (when a C compiler is present) to check that the Python client is within
 * 10% of what a C client gets from the same server. DEPTH (default 1) keeps
 * that many PINGs in flight per connection instead (pipelined: the answers
 * to one read are asked again in one write); bench_workers.py uses it.
 *
 *   pingclient HOST PORT CONNECTIONS SECONDS [DEPTH]  -> prints "<answers> <seconds>"
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
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT CONNECTIONS SECONDS [DEPTH]\n", argv[0]);
        return 2;
    }
    int n = atoi(argv[3]);
    int depth = argc == 6 ? atoi(argv[5]) : 1;
    char buf[4096], pings[5 * sizeof buf];
    for (size_t i = 0; i < sizeof buf; i++) memcpy(pings + 5 * i, "PING\n", 5);
    if (depth < 1 || depth > (int)sizeof buf) return 2;
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
        if (write(fd, pings, 5 * depth) != 5 * depth) return 1;
    }
    long done = 0;
    struct epoll_event events[256];
    double start = now(), end = start + seconds;
    while (now() < end) {
        int k = epoll_wait(ep, events, 256, 100);
        for (int i = 0; i < k; i++) {
            int fd = events[i].data.fd;
            ssize_t got = read(fd, buf, sizeof buf);
            if (got <= 0) { fprintf(stderr, "connection lost\n"); return 1; }
            ssize_t answers = 0;
            for (ssize_t j = 0; j < got; j++) answers += buf[j] == '\n';
            done += answers;
            if (answers && write(fd, pings, 5 * answers) != 5 * answers) return 1;
        }
    }
    printf("%ld %.6f\n", done, now() - start);
    return 0;
}

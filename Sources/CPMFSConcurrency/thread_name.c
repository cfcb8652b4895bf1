#define _GNU_SOURCE
#include <pthread.h>
#include <string.h>
#include "cpmfs_concurrency.h"

int cpmfs_set_thread_name(const char *name) {
    char short_name[16];
    strncpy(short_name, name, sizeof short_name - 1);
    short_name[sizeof short_name - 1] = 0;
    return pthread_setname_np(pthread_self(), short_name);
}

int cpmfs_thread_name(char *buf, size_t size) {
    return pthread_getname_np(pthread_self(), buf, size);
}

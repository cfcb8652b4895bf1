/* Thread naming for PMFSConcurrency: pthread_setname_np and pthread_getname_np
 * are GNU extensions Glibc's Swift module does not declare. */
#ifndef CPMFS_CONCURRENCY_H
#define CPMFS_CONCURRENCY_H

#include <stddef.h>

/* Names the calling thread (at most 15 bytes are kept); 0 or an errno. */
int cpmfs_set_thread_name(const char *name);
/* Copies the calling thread's name into buf; 0 or an errno. */
int cpmfs_thread_name(char *buf, size_t size);

#endif

#define _GNU_SOURCE
#include "clinux.h"
#include <sys/xattr.h>
#include <unistd.h>

ssize_t clinux_llistxattr(const char *path, char *list, size_t size) { return llistxattr(path, list, size); }
ssize_t clinux_lgetxattr(const char *path, const char *name, void *value, size_t size) { return lgetxattr(path, name, value, size); }
int clinux_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags) { return fsetxattr(fd, name, value, size, flags); }
const int clinux_seek_data = SEEK_DATA;
const int clinux_seek_hole = SEEK_HOLE;

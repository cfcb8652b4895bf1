/* Linux calls Swift's Glibc module leaves out: extended attributes and
 * lseek's SEEK_DATA/SEEK_HOLE (for tools that use a mount as programs do).
 * Plain prototypes here; the .c file has the feature macros. */
#ifndef CLINUX_H
#define CLINUX_H
#include <stddef.h>
#include <sys/types.h>

ssize_t clinux_llistxattr(const char *path, char *list, size_t size);
ssize_t clinux_lgetxattr(const char *path, const char *name, void *value, size_t size);
int clinux_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags);
extern const int clinux_seek_data;
extern const int clinux_seek_hole;
#endif

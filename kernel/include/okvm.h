/*
 * okvm.h: the C ABI between okvm's core (okvm.o) and an OS glue.
 *
 * Host services (okvm_host_*) are provided by the glue; entry points (okvm_*) by the core.
 * The object lint checks okvm.o against this file.
 */
#ifndef OKVM_H
#define OKVM_H

#include <stddef.h>
#include <stdint.h>

/* Host service: report a fatal internal error at file:line and halt; never returns. */
void okvm_host_panic(const char *file, size_t file_len, uint32_t line) __attribute__((noreturn));

#endif /* OKVM_H */

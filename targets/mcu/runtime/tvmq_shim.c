/* The runtime symbols TVM's generated C needs, served without malloc.
 *
 * Kernels ask for scratch memory with TVMBackendAllocWorkspace and give it back in reverse
 * order (TVM frees in LIFO order), so a stack over the arena's workspace region serves them.
 * Its size, TVMQ_WORKSPACE_BYTES, is the largest sum of one kernel's requests, read from the
 * kernel source at export (0 for kernels tvmq schedules). A request that does not fit returns
 * NULL and the kernel returns -1. */
#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define TVMQ_WS_ALIGN 16

static size_t tvmq_workspace_top = 0; /* bytes in use from the region's aligned start */

static uint8_t* tvmq_workspace(void) {
  uintptr_t p = (uintptr_t)(tvmq_arena + TVMQ_ACTIVATION_BYTES);
  return (uint8_t*)((p + TVMQ_WS_ALIGN - 1) / TVMQ_WS_ALIGN * TVMQ_WS_ALIGN);
}

void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes, int dtype_code,
                               int dtype_bits) {
  (void)device_type; (void)device_id; (void)dtype_code; (void)dtype_bits;
  size_t start = (tvmq_workspace_top + TVMQ_WS_ALIGN - 1) / TVMQ_WS_ALIGN * TVMQ_WS_ALIGN;
  if (start + nbytes > TVMQ_WORKSPACE_BYTES) return NULL;
  tvmq_workspace_top = start + (size_t)nbytes;
  return tvmq_workspace() + start;
}

int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr) {
  (void)device_type; (void)device_id;
  uint8_t* p = (uint8_t*)ptr;
  if (p < tvmq_workspace() || p >= tvmq_workspace() + TVMQ_WORKSPACE_BYTES) return -1;
  tvmq_workspace_top = (size_t)(p - tvmq_workspace());
  return 0;
}

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n) {
  (void)kind; (void)parts; (void)n;
}

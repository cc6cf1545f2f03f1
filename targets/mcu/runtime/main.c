/* Test harness: runs the model on inputs and prints, per sample, the int8 outputs and the bits
 * of the float outputs as hex:  "out <hex int8 bytes> <hex float32 words>", with one int8 field
 * per model output, then one float field per output ("out <q0> <q1> <f0> <f1>" for two).
 *
 * Host build: `./model_host [inputs.f32]` reads float32 samples from the file (raw, one sample
 * after another) or, without an argument, uses the samples in test_input.h. Cortex-M4 build:
 * the samples of test_input.h, output through semihosting, plus "instructions <n>" per sample
 * (SysTick under qemu -icount shift=0, see TVMQ_TICK_NS). */
#include <stdint.h>
#include <string.h>

#include "model.h"
#include "test_input.h"

/* test_input.h: the samples, and the model's outputs (TVMQ_TEST_OUTPUTS of them, each at
 * tvmq_test_output_offset[i] of these buffers), run by tvmq_test_run / tvmq_test_dequantize. */
static int8_t input_q[TVMQ_INPUT_SIZE], output_q[TVMQ_TEST_OUTPUT_BUFFER];
static float output_f[TVMQ_TEST_OUTPUT_BUFFER];
static char line[32 + 12 * (TVMQ_TEST_OUTPUT_BUFFER)];

static char* put_hex(char* p, uint32_t v, int digits) {
  static const char hex[] = "0123456789abcdef";
  for (int i = digits - 1; i >= 0; --i) *p++ = hex[(v >> (4 * i)) & 0xF];
  return p;
}

static void format_output(void) {
  char* p = line;
  memcpy(p, "out", 3); p += 3;
  for (int k = 0; k < TVMQ_TEST_OUTPUTS; ++k) {
    const int8_t* q = output_q + tvmq_test_output_offset[k];
    *p++ = ' ';
    for (int i = 0; i < tvmq_test_output_size[k]; ++i) p = put_hex(p, (uint8_t)q[i], 2);
  }
  for (int k = 0; k < TVMQ_TEST_OUTPUTS; ++k) {
    const float* f = output_f + tvmq_test_output_offset[k];
    *p++ = ' ';
    for (int i = 0; i < tvmq_test_output_size[k]; ++i) {
      uint32_t bits;
      memcpy(&bits, &f[i], 4);
      p = put_hex(p, bits, 8);
    }
  }
  *p++ = '\n'; *p = 0;
}

#ifdef TVMQ_SEMIHOSTING
/* ---- Cortex-M4 under qemu: semihosting output, SysTick instruction count ---- */
#define SYST_CSR (*(volatile uint32_t*)0xE000E010)
#define SYST_RVR (*(volatile uint32_t*)0xE000E014)
#define SYST_CVR (*(volatile uint32_t*)0xE000E018)
#define TVMQ_TICK_NS 40u /* mps2 SysTick runs at the 25 MHz CPU clock: 40 ns per tick */
extern volatile uint32_t tvmq_systick_wraps;

static char* put_uint(char* p, uint64_t v) {
  char tmp[24];
  int n = 0;
  do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
  while (n) *p++ = tmp[--n];
  return p;
}

static int semihost(int op, const void* arg) {
  register int r0 __asm__("r0") = op;
  register const void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

void tvmq_semihost_exit(int code) {
  /* SYS_EXIT with ADP_Stopped_ApplicationExit (0x20026) ends qemu; code goes in the log. */
  char* p = line;
  memcpy(p, "exit ", 5); p = put_uint(p + 5, (uint32_t)code); *p++ = '\n'; *p = 0;
  semihost(0x04, line);
  semihost(0x18, (const void*)0x20026);
  for (;;) {}
}

static uint64_t ticks(void) {
  uint32_t wraps, cur;
  do { wraps = tvmq_systick_wraps; cur = SYST_CVR; } while (wraps != tvmq_systick_wraps);
  return (uint64_t)wraps * 0x1000000u + (0xFFFFFFu - cur);
}

int main(void) {
  SYST_RVR = 0xFFFFFF; SYST_CVR = 0; SYST_CSR = 0x7; /* CPU clock, interrupt, enable */
  while (SYST_CVR == 0) {} /* until the first reload: a 0 would read as a full period */
  for (int s = 0; s < TVMQ_TEST_SAMPLES; ++s) {
    int rc = tvmq_quantize_input(tvmq_test_input[s], input_q);
    uint64_t t0 = ticks();
    if (rc == 0) rc = tvmq_test_run(input_q, output_q);
    uint64_t t1 = ticks();
    if (rc == 0) rc = tvmq_test_dequantize(output_q, output_f);
    if (rc != 0) return 10 + rc;
    format_output();
    semihost(0x04, line);
    char* p = line;
    memcpy(p, "instructions ", 13);
    p = put_uint(p + 13, (t1 - t0) * TVMQ_TICK_NS); *p++ = '\n'; *p = 0;
    semihost(0x04, line);
  }
  return 0;
}
#else
/* ---- host ---- */
#include <stdio.h>

static int run_sample(const float* x) {
  int rc = tvmq_quantize_input(x, input_q);
  if (rc == 0) rc = tvmq_test_run(input_q, output_q);
  if (rc == 0) rc = tvmq_test_dequantize(output_q, output_f);
  return rc;
}

int main(int argc, char** argv) {
  static float x[TVMQ_INPUT_SIZE];
  if (argc < 2) {
    for (int s = 0; s < TVMQ_TEST_SAMPLES; ++s) {
      if (run_sample(tvmq_test_input[s]) != 0) return 1;
      format_output();
      fputs(line, stdout);
    }
    return 0;
  }
  FILE* f = fopen(argv[1], "rb");
  if (!f) { fprintf(stderr, "cannot open %s\n", argv[1]); return 2; }
  while (fread(x, sizeof(float), TVMQ_INPUT_SIZE, f) == TVMQ_INPUT_SIZE) {
    if (run_sample(x) != 0) { fclose(f); return 1; }
    format_output();
    fputs(line, stdout);
  }
  fclose(f);
  return 0;
}
#endif

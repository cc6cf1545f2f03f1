/* Minimal Cortex-M4 startup for QEMU's mps2-an386: vector table at 0x0, .data copied from
 * flash, .bss zeroed, FPU enabled, SysTick counting wrap-arounds, then main(), then a
 * semihosting exit. */
#include <stdint.h>

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
void tvmq_semihost_exit(int code);

volatile uint32_t tvmq_systick_wraps;

void Reset_Handler(void) {
  uint32_t* src = &_sidata;
  for (uint32_t* dst = &_sdata; dst < &_edata;) *dst++ = *src++;
  for (uint32_t* dst = &_sbss; dst < &_ebss;) *dst++ = 0;
  *(volatile uint32_t*)0xE000ED88 |= 0xFu << 20; /* CPACR: full access to CP10, CP11 */
  __asm volatile("dsb\n isb");
  tvmq_semihost_exit(main());
}

static void Default_Handler(void) {
  tvmq_semihost_exit(99);
}

void SysTick_Handler(void) { tvmq_systick_wraps++; }

__attribute__((section(".isr_vector"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))&_estack, Reset_Handler, Default_Handler, Default_Handler,
    Default_Handler, Default_Handler, Default_Handler, 0, 0, 0, 0,
    Default_Handler, Default_Handler, 0, Default_Handler, SysTick_Handler,
};

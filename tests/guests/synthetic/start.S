/* Entry from hull-vmm's 64-bit boot path: long mode, identity-mapped first GiB, rsi = zero page. */
    .section .text.start, "ax"
    .globl _start
    .code64
_start:
    cli
    lea stack_top(%rip), %rsp
    mov %rsi, %rdi
    call guest_main
1:  hlt
    jmp 1b

    .section .bss
    .align 16
stack:
    .skip 65536
stack_top:

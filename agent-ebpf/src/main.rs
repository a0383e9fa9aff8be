//! cgscope's kernel side.
//!
//! Rust eBPF has no CO-RE relocations, so no record layout is compiled in:
//! every offset below is a read-only global that the agent overrides at load
//! time with values parsed from tracefs `format` files or the kernel's BTF.
#![no_std]
#![no_main]

mod cgroup;
mod iter;
mod oom;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

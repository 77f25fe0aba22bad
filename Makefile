# hull — build, install, test, demo. `make help` lists the targets.

PREFIX     ?= /usr/local
ASSET_DIR  ?= $(PREFIX)/share/hull
BUILD      := build
ASSETS     := $(BUILD)/assets
TARGET     := x86_64-unknown-linux-gnu
AGENT      := target/$(TARGET)/release/hull-agent
export CARGO_TERM_PROGRESS_WHEN = never

.PHONY: help setup kernel agent initramfs tools binaries assets install test demo bench clean

help:
	@echo "make demo     - the seed demo: HTTP server in a microVM, curl it (does all set-up)"
	@echo "make test     - the whole test suite (does all set-up)"
	@echo "make install  - build and install hull under $(PREFIX)"
	@echo "make bench    - benchmarks (prints a table)"

setup:
	@scripts/setup-host.sh

kernel: setup
	@guest-kernel/build.sh $(ASSETS)
	@cp $(ASSETS)/bzImage $(ASSETS)/vmlinuz

# Static agent: glibc with crt-static, libseccomp linked in statically.
agent: setup
	@echo "build: hull-agent (static)"
	@LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
	 RUSTFLAGS="-C target-feature=+crt-static" \
	 cargo build --release --locked --target $(TARGET) -p hull-agent

initramfs: agent
	@mkdir -p $(ASSETS)
	@scripts/mkinitramfs.sh $(AGENT) $(ASSETS)/initramfs.cpio

tools: setup
	@scripts/install-tools.sh $(ASSETS)/bin

binaries: setup
	@echo "build: hull, hull-vmm"
	@cargo build --release --locked -p hull-runtime -p hull-vmm

assets: kernel initramfs tools binaries

install: assets
	@install -d $(ASSET_DIR)/bin $(PREFIX)/bin
	@install -m 0644 $(ASSETS)/vmlinuz $(ASSETS)/vmlinux $(ASSETS)/initramfs.cpio $(ASSET_DIR)/
	@install -m 0755 $(ASSETS)/bin/virtiofsd $(ASSETS)/bin/vhost-device-vsock $(ASSET_DIR)/bin/
	@install -m 0755 target/release/hull target/release/containerd-shim-hull-v2 target/release/hull-vmm $(PREFIX)/bin/
	@echo "install: hull in $(PREFIX)/bin, assets in $(ASSET_DIR)"

# The suite runs against this checkout's build (HULL_ASSET_DIR), not what is installed.
test: assets
	@if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -e /dev/kvm ]; then \
	  echo "test: hardware KVM present: QEMU runs with -accel kvm"; \
	else \
	  echo "test: NOTE: no hardware KVM (vmx/svm) here: every VM runs under QEMU/TCG; the hull-vmm backend suite does not exist yet and did not run"; \
	fi
	@HULL_ASSET_DIR=$(CURDIR)/$(ASSETS) cargo test --release --locked --workspace -- --test-threads=1

demo: install
	@scripts/demo.sh

bench: assets
	@cargo build --release --locked -p hull-tests --bin containerd-bench
	@HULL_ASSET_DIR=$(CURDIR)/$(ASSETS) bench/run.sh

clean:
	rm -rf $(BUILD) target

# hull — build, install, test, demo. `make help` lists the targets.

PREFIX     ?= /usr/local
ASSET_DIR  ?= $(PREFIX)/share/hull
BUILD      := build
ASSETS     := $(BUILD)/assets
TARGET     := x86_64-unknown-linux-gnu
AGENT      := target/$(TARGET)/guest/hull-agent
# The test-only hostile agent: built in the same target dir (its dependencies are the same
# artifacts; only the agent crate differs) and copied aside before it is packed.
HOSTILE    := target/hull-agent-hostile
export CARGO_TERM_PROGRESS_WHEN = never

.PHONY: help setup kernel agent initramfs initramfs-hostile tools binaries assets install check test test-nested fuzz demo bench bench-nested clean

help:
	@echo "make demo     - the seed demo: HTTP server in a microVM, curl it (does all set-up)"
	@echo "make test     - the whole test suite (does all set-up; starts with make check)"
	@echo "make check    - fast: cargo fmt --check, clippy -D warnings, unit tests (no VM)"
	@echo "make test-nested - the e2e suite on hull-vmm inside an L1 VM with nested KVM (no hardware KVM needed)"
	@echo "make install  - build and install hull under $(PREFIX)"
	@echo "make bench    - benchmarks (prints a table); make bench-nested: hull-vmm vs QEMU/KVM in the nested L1"

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
	 cargo build --profile guest --locked --target $(TARGET) -p hull-agent

initramfs: agent
	@mkdir -p $(ASSETS)
	@scripts/mkinitramfs.sh $(AGENT) $(ASSETS)/initramfs.cpio

# A hostile guest for the isolation tests (agent/src/hostile.rs): never installed.
initramfs-hostile: setup
	@echo "build: hull-agent with the test-only hostile behaviours"
	@LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=/usr/lib/x86_64-linux-gnu \
	 RUSTFLAGS="-C target-feature=+crt-static" \
	 cargo build --profile guest --locked --target $(TARGET) -p hull-agent --features hostile
	@cp $(AGENT) $(HOSTILE)
	@mkdir -p $(ASSETS)
	@scripts/mkinitramfs.sh $(HOSTILE) $(ASSETS)/initramfs-hostile.cpio

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

# Fast checks that need no VM: formatting, lints (the workspace's [lints], -D warnings) and
# every crate's unit tests, the pod core's over a fake agent among them.
check:
	@scripts/rust-components.sh
	@echo "check: cargo fmt --check"
	@cargo fmt --all --check
	@echo "check: cargo clippy -D warnings"
	@cargo clippy --locked --workspace --all-targets -- -D warnings
	@cargo clippy --locked -p hull-agent --features hostile -- -D warnings
	@echo "check: unit tests"
	@cargo test --release --locked --workspace --lib --bins

# The suites run against this checkout's build (HULL_ASSET_DIR), not what is installed:
# scripts/test.sh says where each runs (on hardware KVM: all on hull-vmm, foundation again on
# QEMU/KVM; without it: all on QEMU/TCG here and, side by side, all on hull-vmm in the
# nested-KVM rig's L1) and ends with a table of what ran where.
test: check assets initramfs-hostile
	@scripts/test.sh

# Without hardware KVM: the whole e2e suite on hull-vmm, and foundation on QEMU/KVM, inside
# the nested-KVM L1 of tests/nested/, alone (make test runs it beside the host suite).
test-nested: assets initramfs-hostile
	@cargo build --release --locked -p hull-tests --tests
	@scripts/test.sh nested

fuzz:
	@scripts/fuzz.sh $${FUZZ_SECONDS:-60}

demo: install
	@scripts/demo.sh

bench: assets
	@cargo build --release --locked -p hull-tests --bin containerd-bench --bin vmm-bench
	@HULL_ASSET_DIR=$(CURDIR)/$(ASSETS) bench/run.sh

# hull-vmm against QEMU/KVM on real (nested) KVM inside the test rig's L1, next to QEMU/TCG here.
bench-nested: assets
	@HULL_ASSET_DIR=$(CURDIR)/$(ASSETS) bench/nested.sh

clean:
	rm -rf $(BUILD) target

# Berth: `make run` boots the image in QEMU, `make test` runs every test.
# Everything builds in release mode: the image needs it, and building one profile instead
# of two saves CI minutes.

SHELL := /bin/bash
CARGO ?= cargo
BIN := target/release
OUT := out
VARIANT ?= prod
# make run boots the disk image through this firmware: uefi, bios, or direct (-kernel).
FIRMWARE ?= uefi
IMAGE_DIR := $(if $(filter test,$(VARIANT)),$(OUT)/test,$(OUT))
# The minisign secret key that signs the update payload (default: a development key
# image-build makes once under cache/keys/).
SIGNING_KEY ?=
SIGN := $(if $(SIGNING_KEY),--signing-key $(SIGNING_KEY))
# The OS version the image and its update payload record (SemVer; default: the build's).
VERSION ?=
IMAGE_FLAGS := $(SIGN) $(if $(VERSION),--version $(VERSION))
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build image image-test floor run test lint unit vm-test bench clean

all: image

deps:
	@scripts/deps.sh

build: deps
	$(CARGO) build --release --workspace --bins

# Kernel + initramfs (+ manifest.json) in out/ (VARIANT=test: out/test/).
image: build
	$(BIN)/image-build image --variant $(VARIANT) --out $(IMAGE_DIR) $(IMAGE_FLAGS)

image-test: build
	$(BIN)/image-build image --variant test --out $(OUT)/test $(IMAGE_FLAGS)

floor: build
	$(BIN)/image-build floor --out $(OUT)/floor

run: image
	$(BIN)/berth-vm run --kernel $(IMAGE_DIR)/vmlinuz --initrd $(IMAGE_DIR)/initrd.img \
		--disk $(IMAGE_DIR)/berth.raw --firmware $(FIRMWARE) \
		--user-data demo/user-data.yaml --forward 8080:8080

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Unit and host tests, then the QEMU tests against the real test image.
# Each QEMU test's VM time is printed at the end, pass or fail.
test: lint image-test floor
	rm -f $(OUT)/qemu-times.tsv
	BERTH_TEST_IMAGE=$(CURDIR)/$(OUT)/test BERTH_KERNEL=$(CURDIR)/$(OUT)/test/vmlinuz \
		BERTH_TEST_TIMES=$(CURDIR)/$(OUT)/qemu-times.tsv \
		$(CARGO) test --release --workspace; status=$$?; \
		scripts/test-times.sh $(OUT)/qemu-times.tsv; exit $$status

# Every goal of docs/benchmarks.md, each against a floor measured in the same run; the
# table at the end (bench-summary) says which are met. Each JSON file records the commit.
bench: export BERTH_COMMIT := $(shell git rev-parse --short=12 HEAD 2>/dev/null)$(shell git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo -dirty)
bench: image image-test floor
	$(BIN)/berth-vm bench --kernel $(OUT)/vmlinuz --initrd $(OUT)/initrd-stage1.img \
		--floor-initrd $(OUT)/floor/initrd.img --disk $(OUT)/berth.raw \
		--floor-disk $(OUT)/floor/floor.raw --firmware uefi --runs 3 --json $(OUT)/bench.json
	$(BIN)/berth-vm bench --kernel $(OUT)/vmlinuz --initrd $(OUT)/initrd-stage1.img \
		--floor-initrd $(OUT)/floor/initrd.img --disk $(OUT)/berth.raw \
		--floor-disk $(OUT)/floor/floor.raw --firmware bios --runs 3 --json $(OUT)/bench-bios.json
	$(BIN)/berth-vm bench-demo --kernel $(OUT)/vmlinuz --initrd $(OUT)/initrd.img \
		--disk $(OUT)/berth.raw --user-data demo/user-data.yaml --json $(OUT)/bench-demo.json
	$(BIN)/berth-vm bench-runtimes --kernel $(OUT)/test/vmlinuz --initrd $(OUT)/test/initrd.img \
		--runs 50 --json $(OUT)/bench-runtimes.json
	$(BIN)/berth-vm bench-runtimes --kernel $(OUT)/test/vmlinuz --initrd $(OUT)/test/initrd.img \
		--runs 50 --writable --json $(OUT)/bench-runtimes-writable.json
	$(BIN)/berth-store-bench --runs 5 --json $(OUT)/bench-pull.json
	$(BIN)/berth-vm bench-logforward --json $(OUT)/bench-logforward.json
	$(BIN)/berth-vm bench-daemon --kernel $(OUT)/test/vmlinuz --initrd $(OUT)/test/initrd.img \
		--disk $(OUT)/test/berth.raw --containers 100 --json $(OUT)/bench-daemon.json
	# A newer build of the same tree (only its version differs) to update to.
	$(BIN)/image-build image --variant test --out $(OUT)/test-newer --version 999.0.0 $(SIGN)
	$(BIN)/berth-vm bench-update --kernel $(OUT)/test/vmlinuz --initrd $(OUT)/test/initrd.img \
		--disk $(OUT)/test/berth.raw --newer $(OUT)/test-newer --json $(OUT)/bench-update.json
	$(BIN)/berth-vm bench-summary --dir $(OUT)

clean:
	rm -rf $(OUT)

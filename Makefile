# Build, generate the man page and completions, install, package.
#
#   make                  release build + assets (target/assets: unionmount.8, completions/)
#   make readme           regenerate README's option table from src/cli.rs
#   make install          into $(DESTDIR)$(PREFIX) (default /usr/local): bin, man8, completions
#   make uninstall
#   make deb              Debian package via cargo-deb (cargo install cargo-deb); not used by CI
#   make test             cargo test
#
# mount(8) -> mount.fuse3 finds unionmount through /bin/sh's default PATH
# (/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin), so for
# `mount -t fuse.unionmount` and fstab use a PREFIX whose bin/ is on it (the default is).

PREFIX ?= /usr/local
DESTDIR ?=
CARGO ?= cargo
BINDIR = $(DESTDIR)$(PREFIX)/bin
MANDIR = $(DESTDIR)$(PREFIX)/share/man/man8
BASHDIR = $(DESTDIR)$(PREFIX)/share/bash-completion/completions
ZSHDIR = $(DESTDIR)$(PREFIX)/share/zsh/site-functions
FISHDIR = $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
ASSETS = target/assets

.PHONY: all build assets readme install uninstall deb test clean

all: build assets

build:
	$(CARGO) build --release --locked

assets:
	$(CARGO) run --quiet --locked --example gen-assets -- $(ASSETS)

readme:
	$(CARGO) run --quiet --locked --example gen-assets -- --readme README.md

install: all
	install -D -m 755 target/release/unionmount $(BINDIR)/unionmount
	install -D -m 644 $(ASSETS)/unionmount.8 $(MANDIR)/unionmount.8
	install -D -m 644 $(ASSETS)/completions/unionmount.bash $(BASHDIR)/unionmount
	install -D -m 644 $(ASSETS)/completions/_unionmount $(ZSHDIR)/_unionmount
	install -D -m 644 $(ASSETS)/completions/unionmount.fish $(FISHDIR)/unionmount.fish

uninstall:
	rm -f $(BINDIR)/unionmount $(MANDIR)/unionmount.8 $(BASHDIR)/unionmount \
	      $(ZSHDIR)/_unionmount $(FISHDIR)/unionmount.fish

deb: all
	$(CARGO) deb --no-build

test:
	$(CARGO) test

clean:
	$(CARGO) clean

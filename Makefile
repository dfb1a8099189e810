# webhook_outbox — PGXS build.
#
#   make             build the extension
#   make install     install it into the PostgreSQL that pg_config names
#   make test        install what is missing, build, install, run every test
#   make demo        install what is missing, build, install, run the ledger demo
#   make bench       run the benchmarks of bench/ and append to bench/RESULTS.md
#   make test-citus  build Citus if missing, run the tests on a Citus cluster
#                    (test/citus; not part of make test)

EXTENSION  = webhook_outbox
MODULE_big = webhook_outbox
OBJS = \
	src/webhook_outbox.o \
	src/wakeup.o \
	src/validate.o \
	src/signing.o \
	src/endpoints.o \
	src/emit.o \
	src/launcher.o \
	src/worker.o \
	src/scheduler.o \
	src/queue.o \
	src/http.o \
	src/address.o \
	src/citus.o

DATA = $(wildcard sql/webhook_outbox--*.sql)
PGFILEDESC = "webhook_outbox - transactional webhook outbox"

PG_CONFIG ?= pg_config
PKG_CONFIG ?= pkg-config

PG_CPPFLAGS = -I$(srcdir)/src $(shell $(PKG_CONFIG) --cflags libcurl libcrypto 2>/dev/null)
SHLIB_LINK  = $(shell $(PKG_CONFIG) --libs libcurl libcrypto 2>/dev/null)

# Regression tests: one file per feature, against a throwaway server that
# preloads the library (the worker then waits on a database without the
# extension, so it cannot disturb the expected output).
REGRESS = $(patsubst sql/%.sql,%,$(sort $(filter-out sql/webhook_outbox--%,$(wildcard sql/*.sql))))
REGRESS_OPTS = --temp-instance=./tmp_check_regress --temp-config=$(srcdir)/test/regress.conf --encoding=UTF8

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl

# On a machine without the server's development files (or pg_config) the
# build rules are missing, but test, demo and bench still run: their scripts
# install what is needed first.
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)
ifneq ($(wildcard $(PGXS)),)
include $(PGXS)

# After the include: PGXS resets PROVE_FLAGS.
PROVE_FLAGS = -I $(srcdir)/test/lib

# -Wextra (as CI builds) also fires on PostgreSQL's own headers for these two.
override CFLAGS += -Wno-unused-parameter -Wno-missing-field-initializers

# Our headers define shared structs (Delivery): rebuild every object when
# one changes, or a stale object reads the struct at old offsets.
$(OBJS): $(wildcard $(srcdir)/src/*.h)
else
all install installcheck:
	@echo "PostgreSQL's server development files are missing: 'make test' or 'make demo' installs them" >&2
	@exit 1
endif

.PHONY: test test-citus demo bench fuzz
test:
	./test/run

test-citus:
	./test/citus/run

demo:
	./demo/run

bench:
	./bench/run

fuzz:
	./test/fuzz/run

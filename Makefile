# The two commands a newcomer needs (both install what they need first):
#   make demo   the demo farm on the embedded default (SQLite)
#   make test   the whole test suite
.PHONY: demo test bootstrap lint unit collection clean

bootstrap:
	scripts/bootstrap

demo: bootstrap
	scripts/demo $(ARGS)

test: bootstrap
	scripts/test

lint: bootstrap
	.venv/bin/ruff check .
	.venv/bin/mypy

unit: bootstrap
	.venv/bin/pytest -q tests/unit

collection: bootstrap
	.venv/bin/ansible-galaxy collection build --force --output-path build/ .

clean:
	rm -rf build/ .pytest_cache .ruff_cache .mypy_cache

# tunedeck: `make run` opens the app, `make test` runs the whole suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch without an NVIDIA driver. With one, tools/setup_torch.py takes the system's working torch
# or the wheel index matching the driver (TORCH_INDEX=cu124, cpu or a URL forces an index).
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: run test check lint format bench clean

$(STAMP): pyproject.toml tools/setup_torch.py
	$(PYTHON) tools/setup_torch.py --venv $(VENV) --cpu-spec "$(TORCH_SPEC)" --index "$(TORCH_INDEX)"
	$(BIN)/pip install --quiet -e ".[train,dev]" -c $(VENV)/torch-constraint.txt
	@$(BIN)/python tools/link_command.py $(BIN)/tunedeck
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tunedeck

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

check: lint
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info

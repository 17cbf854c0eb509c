# comfyui-psld developer commands. Hosts are real ComfyUI installs built from PyPI on CPU torch (git-ignored).
#   make host    build ComfyUI 0.30.0 (.comfyui) and 0.3.75 (.comfyui-floor)
#   make test    every test layer on both hosts
#   make serve   run the current host with this pack on http://127.0.0.1:8188
#   make demo    the demo-model workflows on a headless server: .artifacts/demo/psld_demo.png, .md, .json
#   make bench   benchmark scripts (print measured ratios)
#   make gpu-check  stage .gpucarry/ for the GPU device machine, print its run call, smoke-test the staged tree
SHELL := /bin/bash
CUR_PY   := .comfyui/venv/bin/python
FLOOR_PY := .comfyui-floor/venv/bin/python
PYTEST   := -q -ra -p no:cacheprovider
PORT     ?= 8188

.PHONY: host host-current host-floor serve demo test test-psld test-current test-floor test-browser browser-deps bench gpu-check clean-host

host: host-current host-floor

host-current:
	bash tools/host/build_host.sh current

host-floor:
	bash tools/host/build_host.sh floor

serve: host-current
	$(CUR_PY) tools/make_tiny_models.py --comfy .comfyui/ComfyUI --out .artifacts/models
	mkdir -p .comfyui/state/output .comfyui/state/temp .comfyui/state/input .comfyui/state/user
	cd .comfyui/ComfyUI && ../venv/bin/python main.py --cpu --listen 127.0.0.1 --port $(PORT) \
	  --disable-auto-launch --disable-api-nodes --use-pytorch-cross-attention \
	  --extra-model-paths-config ../extra_model_paths.yaml \
	  --output-directory ../state/output --temp-directory ../state/temp \
	  --input-directory ../state/input --user-directory ../state/user

# PSLD vs plain ComfyUI on the bundled demo prior (5 tasks, seconds each on a CPU); exits 1 if a workflow fails
demo: host-current
	$(CUR_PY) tools/demo.py

# pure torch (psld/), then in-process and server tests on each host, then the browser tests
test: host test-psld test-current test-floor test-browser

test-psld: host-current
	$(CUR_PY) -m pytest tests/psld $(PYTEST)

test-current: host-current
	PSLD_COMFY_HOST=current $(CUR_PY) -m pytest tests/comfy tests/server $(PYTEST)

test-floor: host-floor
	PSLD_COMFY_HOST=floor $(FLOOR_PY) -m pytest tests/comfy tests/server $(PYTEST)

browser-deps: host
	bash tools/install_browser.sh $(CUR_PY)
	bash tools/install_browser.sh $(FLOOR_PY)

test-browser: browser-deps
	PSLD_COMFY_HOST=current $(CUR_PY) -m pytest tests/browser $(PYTEST)
	PSLD_COMFY_HOST=floor $(FLOOR_PY) -m pytest tests/browser $(PYTEST)

bench: host-current
	$(CUR_PY) bench/psld_overhead.py
	$(CUR_PY) bench/comfy_step.py

# bench/gpu_psld.py on the device machine: stages ComfyUI 0.30 and the missing wheels into .gpucarry/ and prints
# the device call; here it runs the script's --smoke check (tiny checkpoint, CPU) against the staged tree
gpu-check: host-current
	bash tools/gpu_check.sh

clean-host:
	rm -rf .comfyui .comfyui-floor

"""The method: the adapter (a soft prompt plus a DePT or ADePT update of the input embeddings), the
model that applies it to any frozen transformers backbone, its checkpoints and exports, its optimizer
groups and default rates. Needs only torch, transformers and safetensors; everything else in dept
(runs, tasks, serving, benchmarks, the command line) is built on it."""

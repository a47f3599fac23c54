"""The demo's defaults, torch-free, so that `minireft demo --help` shows them without
importing torch; minireft.demo.demo.run_demo takes its defaults from here."""

DEFAULT_OUTPUT_DIR = "runs/demo"

# Chosen by measurement (seed 0, rank 4, batch 8, 1 epoch; held-out accuracy as minireft.demo.demo defines it):
#   128 train / 100 held out, lr 4e-3 (zero-shot 0.60): layers 8,16 f1+l1 0.50; 6,12,18,24 l1 0.50;
#       15 f1+l3 0.68; 18 l3 0.74; 15 l3 0.78; 14,20 l3 0.79
#   256 train / 200 held out (zero-shot 0.61): 14,20 l3 lr 4e-3 0.80 (l5 0.805); 12,16,20 l3 0.73;
#       14,20 l3 lr 2e-3 0.745; lr 1e-2 collapses to one answer (0.50-0.54)
# A linear probe of the frozen model's states finds sentiment best at the last prompt tokens of
# blocks 18-22 (~0.75, 5-fold CV on 320 reviews); the first tokens (the fixed system prompt)
# cannot see the review (causal attention). So: the last 3 prompt tokens ("assistant\n", 3
# tokens) of blocks 14 and 20 of 30. On 2 idle CPU cores the whole demo
# takes ~2 minutes (load 2 s, or ~20 s the first time; each evaluation ~25 s; training ~63 s).
DEFAULTS = {"n_train": 256, "n_eval": 200, "layers": (14, 20), "rank": 4, "positions": "l3",
            "epochs": 1, "batch_size": 8, "lr": 4e-3, "n_generations": 4}

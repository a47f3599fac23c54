"""minireft.demo: the offline sandbox, outside the spec's namespace. It
imports minireft.hf (the packaged model is minireft.hf.packaged); in minireft only the CLI imports it.

    datasets    task readers over data files shipped inside pip packages (Rotten Tomatoes,
                BoolQ, PIQA, ASDiv)
    demo        `minireft demo`: LoReFT learns review sentiment on SmolLM2, on a CPU
"""

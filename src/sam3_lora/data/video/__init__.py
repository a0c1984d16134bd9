"""Video datasets: the DAVIS / YouTube-VOS folder layout the tracker trains on (``layout``),
its checks (``checks``, behind ``sam3-lora data validate``), synthetic clips in that layout
(``synth``, behind ``sam3-lora data synth --video``) and the training clips sampled from it as
SAM 2 trains (``clips``)."""

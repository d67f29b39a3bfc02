"""Definitions shown in the app, written once (they follow DE3_SPEC §4–§6 and analysis/cost.py).

Each exit policy's own words (one line, its exit test) live with the policy: ``analysis.policies.REGISTRY``."""

SPEEDUP = r"\text{speed-up} = \frac{L}{\overline{e}} = \frac{L \cdot N}{\sum_{i=1}^{L} i \cdot N_i}"
SAVED = r"\text{saved fraction} = 1 - \frac{\overline{e}}{L}"
FLOPS = r"\text{FLOPs ratio} = \frac{\sum_n \mathrm{FLOPs}_{\text{early exit}}(n)}{\sum_n \mathrm{FLOPs}_{\text{full}}(n)}"

COST_WORDS = (
    "L = number of layers, N = samples, N_i = samples that leave at layer i, ē = mean exit layer. "
    "**Speed-up** counts layers: 2× means half the layers on average. The **saved fraction** is the same "
    "number said differently (some papers print it and call it speed-up). The **FLOPs ratio** counts "
    "arithmetic (analysis/cost.py): every executed layer at the sample's own token count "
    "(8TH² + 4T²H + 4THI), plus every exit head and prototype distance evaluated on the way "
    "(2H² + 2HK + 2Hd_p + 3Kd_p per layer); the reference is the full model with its final classifier. "
    "Exit heads cost a little, so the FLOPs ratio is a bit above 1/speed-up."
)

ENTROPY = r"\mathrm{Entropy}_m = -\frac{1}{\log K}\sum_{k=1}^{K} p_{m,k}\,\log p_{m,k} \;\in [0, 1]"
R1R2 = (r"r_1 = d(e_m, c_{m,\hat y_m}) \qquad r_2 = \min_{k \neq \hat y_m} d(e_m, c_{m,k})")
DR = r"\mathrm{DR}_m = \frac{1}{2}\left(1 + \frac{r_1 - r_2}{\max(r_1, r_2)}\right) \;\in [0, 1]"
EDR = r"\mathrm{EDR}_m = \frac{\lambda + 1}{\lambda / \mathrm{DR}_m + 1 / \mathrm{Entropy}_m}"
EXIT_RULE = r"\text{exit at the first } m < L \text{ with } \mathrm{EDR}_m < \tau \text{, answering } \hat y_m"

ENTROPY_WORDS = (
    "**Entropy (local).** How spread out this layer's class probabilities are, divided by log K so it lies "
    "between 0 (all mass on one class: confident) and 1 (uniform: clueless). It only looks at this one "
    "sample's own output."
)
DR_WORDS = (
    "**Distance ratio (global).** Every layer has one *prototype* per class, a moving average of the training "
    "samples' embeddings — a picture of the whole population. r₁ is the distance to the prototype of the "
    "class the layer predicts, r₂ to the nearest other prototype. DR < 0.5: the geometry agrees with the "
    "classifier (closer to the predicted class); 0.5: a tie; > 0.5: a rival prototype is nearer."
)
EDR_WORDS = (
    "**EDR (DE3-BERT's exit signal).** The weighted harmonic mean of DR and entropy. A harmonic mean is pulled "
    "towards the *smaller* of its inputs, so one very confident signal lowers EDR a lot; λ sets how much DR "
    "counts (λ = 0: entropy alone; large λ: DR alone). Lower = more confident; a sample leaves at the first "
    "layer m < L whose EDR is below τ, and the last layer answers whoever is left."
)
SPEEDUP_WORDS = (
    "**Speed-up.** If every sample ran all L layers, the cost is L per sample. Early exiting runs only "
    "ē layers on average, so the speed-up is L / ē. Lower τ → fewer exits → less speed-up, usually higher "
    "accuracy; raise τ and the model answers earlier, trading accuracy for speed."
)

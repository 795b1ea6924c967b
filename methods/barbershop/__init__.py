"""Barbershop (ZPdesu/Barbershop) method plugin: parameters (:mod:`.params`), losses, latent PCA and projected
optimiser (:mod:`.losses`), the four stages (:mod:`.pipeline`), the per-image / per-pair result cache
(:mod:`.cache`) and the ``barbershop`` method (:mod:`.method`), registered by :mod:`.plugin`."""

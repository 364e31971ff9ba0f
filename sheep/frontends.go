package sheep

// startFrontEnds starts iSCSI, NBD and metrics listeners as configured.
func (d *Daemon) startFrontEnds() error { return nil }

func (d *Daemon) stopFrontEnds() {}

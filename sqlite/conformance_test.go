package sqlite

import (
	"testing"

	"github.com/iothub/iothub"
	"github.com/iothub/iothub/storetest"
)

// The shared iothub.Store suite, which the postgres store passes too.
func TestStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) iothub.Store { return newDB(t) })
}

package dispatch_test

import (
	"encoding/base64"
	"fmt"

	"github.com/comfyfleet/comfyfleet/internal/dispatch"
)

// A receiver checks a webhook by recomputing its signature from the
// webhook-id and webhook-timestamp headers and the raw body.
func ExampleSign() {
	key, _ := base64.StdEncoding.DecodeString("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") // WEBHOOK_SECRET=whsec_MfKQ…
	fmt.Println(dispatch.Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`)))
	// Output: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=
}
